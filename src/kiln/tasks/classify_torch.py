"""The ``classify`` task in PyTorch: the fp32 reference and the module the exporter traces (build only)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kiln.errors import TaskError
from kiln.runtime.tokenizer import TextTokenizer
from kiln.tasks.hf_load import TorchRunner, load_hf_model, quiet_transformers

GRAPH_OUTPUT = "logits"


class LogitsClassifier(torch.nn.Module):
    """A ``*ForSequenceClassification`` model called positionally, returning only its logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        logits: torch.Tensor = out.logits
        return logits


def model_labels(cfg: dict[str, object], where: str) -> list[str]:
    """The class names of a Hugging Face config, in logit order (from ``id2label``)."""
    raw = cfg.get("id2label")
    if not isinstance(raw, dict) or not raw:
        n = cfg.get("num_labels")
        if isinstance(n, int) and n >= 2:
            return [f"LABEL_{i}" for i in range(n)]
        raise TaskError(f"{where}: config.json has no id2label: kiln cannot tell the model's classes")
    try:
        by_id = {int(k): str(v) for k, v in raw.items()}
    except ValueError as exc:
        raise TaskError(f"{where}: config.json id2label has a non-integer id ({exc})") from exc
    if sorted(by_id) != list(range(len(by_id))):
        raise TaskError(
            f"{where}: config.json id2label ids are {sorted(by_id)}; expected 0..{len(by_id) - 1}"
        )
    if len(by_id) < 2:
        raise TaskError(f"{where}: the model has a single class; a classifier needs at least 2")
    return [by_id[i] for i in range(len(by_id))]


def check_classify_config(model_dir: Path) -> list[str]:
    """Refuse folders the classify task cannot use, before loading weights; return the class names."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise TaskError(
            f"{model_dir} has no config.json: the classify task needs a Hugging Face "
            "*ForSequenceClassification folder"
        )
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    archs = [str(a) for a in cfg.get("architectures") or []]
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise TaskError(
            f"{model_dir.name} is {', '.join(archs) or cfg.get('model_type') or 'an unknown architecture'}; "
            "task classify needs a fine-tuned sequence classifier "
            "(architectures: *ForSequenceClassification), "
            "e.g. from scripts/finetune_rt_classifier.py"
        )
    if cfg.get("problem_type") == "multi_label_classification":
        raise TaskError(
            f"{model_dir.name} is a multi-label classifier; task classify handles one label per text"
        )
    if cfg.get("problem_type") == "regression":
        raise TaskError(f"{model_dir.name} is a regression model; task classify needs class labels")
    return model_labels(cfg, model_dir.name)


class TorchClassifier(TorchRunner):
    """The PyTorch fp32 reference: logits ``[n, classes]`` for texts."""

    def __init__(self, model_dir: Path, tokenizer: TextTokenizer, threads: int = 0) -> None:
        from transformers import AutoModelForSequenceClassification

        quiet_transformers()
        self.labels = check_classify_config(model_dir)
        model = load_hf_model(AutoModelForSequenceClassification, model_dir, threads, "a sequence classifier")
        self.module = LogitsClassifier(model).eval()
        self.tokenizer = tokenizer
