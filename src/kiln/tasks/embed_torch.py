"""The ``embed`` task in PyTorch: the fp32 reference and the module the exporter traces (build only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from kiln.errors import TaskError
from kiln.runtime.tokenizer import TextTokenizer
from kiln.tasks.hf_load import (
    INPUT_NAMES as INPUT_NAMES,  # re-exported: the exporter and tests import it here
)
from kiln.tasks.hf_load import TorchRunner, load_hf_model, quiet_transformers

# The exported graph's output; "embedding" would clash with names inside BERT graphs. The server
# publishes it under the task's protocol name (EmbedConfig.output_name).
GRAPH_OUTPUT = "sentence_embedding"


class MeanPooledEncoder(torch.nn.Module):
    """Encoder + attention-masked mean pooling + L2 normalisation, as sentence-transformers does."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(summed / counts, p=2, dim=1)


def check_embed_config(model_dir: Path) -> dict[str, object]:
    """Refuse models the embed task cannot use, before loading any weights."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise TaskError(f"{model_dir} has no config.json: the embed task needs a Hugging Face encoder folder")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    archs = [str(a) for a in cfg.get("architectures") or []]
    if cfg.get("is_decoder") or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise TaskError(
            f"{model_dir.name} is a decoder ({', '.join(archs) or cfg.get('model_type')}); "
            "task embed needs a bidirectional encoder such as BERT or MiniLM"
        )
    return dict(cfg)


def pooling_mode(model_dir: Path) -> str:
    """The sentence-transformers pooling of a model folder ("mean" when none is declared)."""
    for cfg in sorted(model_dir.glob("*_Pooling/config.json")):
        data = json.loads(cfg.read_text(encoding="utf-8"))
        for mode in ("cls_token", "max_tokens", "mean_sqrt_len_tokens"):
            if data.get(f"pooling_mode_{mode}"):
                return mode
    return "mean"


class TorchEmbedder(TorchRunner):
    """The PyTorch fp32 reference: the baseline every variant is compared to."""

    module: MeanPooledEncoder

    def __init__(self, model_dir: Path, tokenizer: TextTokenizer, threads: int = 0) -> None:
        from transformers import AutoModel

        quiet_transformers()

        check_embed_config(model_dir)
        mode = pooling_mode(model_dir)
        if mode != "mean":
            raise TaskError(f"{model_dir.name} declares {mode} pooling; kiln's embed task does mean pooling")
        encoder = load_hf_model(AutoModel, model_dir, threads, "an encoder")
        self.module = MeanPooledEncoder(encoder).eval()
        self.tokenizer = tokenizer

    @property
    def dimension(self) -> int:
        config: Any = self.module.encoder.config
        return int(config.hidden_size)
