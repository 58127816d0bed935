"""The bundle's human model card (README.md), written from the manifest's measured numbers."""

from __future__ import annotations

from kiln.bundle.manifest import Manifest
from kiln.report.variants import rejected_notes, variants_markdown


def model_card(m: Manifest) -> str:
    ev = m.evaluation
    classify = m.task == "classify"
    fitted = "not held out" if classify else "to fit the probe"
    eval_line = (
        f"{ev.dataset}: {ev.n_train} examples {fitted}, {ev.n_test} held out (seed {ev.seed}). {ev.notes}"
        if ev
        else "no evaluation recorded"
    )
    metric = "accuracy" if classify else "probe accuracy"
    route = "classify" if classify else "embeddings"
    rejected = rejected_notes(m.variants)
    rejected_md = "\n".join(f"- {line}" for line in rejected) if rejected else "- none"
    src = m.source
    return f"""# {m.model_name} (kiln bundle)

- **task**: `{m.task}`
- **source**: {src.kind} `{src.spec}`{f" @ `{src.revision}`" if src.revision else ""}
- **license**: {m.license}
- **served variant**: `{m.chosen}` (`{m.artifact}`)
- **why**: {m.chosen_reason}
- **built**: {m.created_at} with kiln {m.kiln_version} on {m.machine.get("cpu", "unknown CPU")}

## Measured variants

Every figure was measured on the build machine during the build. Latency is end to end
(tokenisation + inference) after warm-up; the quality drop is the reference's {metric} minus the
variant's, with a paired bootstrap 95% interval.

{variants_markdown(m.variants, m.chosen)}

Evaluation: {eval_line}

Rejected or failed variants:
{rejected_md}

## Use

```
kiln serve <this folder>
curl -s localhost:8000/v1/{route} -H 'content-type: application/json' \\
  -d '{{"model": "{m.model_name}", "input": ["hello world"]}}'
```
"""
