"""Architecture -> parameter count, group by group, from a Hugging Face ``config.json`` (no weights needed).

Four families are counted exactly, tensor by tensor, the way their reference code builds them:

    decoder   llama-style (llama, mistral, mixtral, qwen2/3, gemma, phi3, olmo, SmolLM...): embeddings,
              attention with grouped-query K/V, gated MLP or MoE experts (+ shared experts, router),
              RMSNorms, an LM head unless the embeddings are tied
    gpt2      learned positions, fused QKV with biases, 4x MLP, LayerNorms, tied head
    encoder   BERT-style (bert, roberta, xlm-roberta): word/position/type embeddings, biased attention and
              MLP, LayerNorms, pooler for the architectures that have one
    cnn       EfficientNet / EfficientNet-Lite (``model_type: "efficientnet"``): stem, MBConv blocks, head,
              classifier, counted by :mod:`kiln.plan.cnn`; ``hidden`` is the head's channels, ``layers``
              the number of blocks, ``vocab`` the number of classes, ``max_positions`` the image side

Any other ``model_type`` is counted as a llama-style decoder and the result says so in its notes.
``ArchSpec.from_config`` reads the sizes; ``count_parameters(spec)`` returns a :class:`ParamBreakdown`
whose groups say which tensors are matrices a quantizer would convert (``quantizable``) and how many
parameters one token touches (``active``: all of them, except unchosen MoE experts).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from kiln.plan.cnn import CNN_TYPES, ConvNetSpec
from kiln.plan.errors import PlanError

Family = Literal["decoder", "gpt2", "encoder", "cnn"]

_DECODERS = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "gemma",
        "gemma2",
        "phi3",
        "olmo",
        "olmo2",
        "granite",
        "cohere",
        "starcoder2",
    }
)
_ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "camembert"})
# tie_word_embeddings when config.json leaves it out: the model class's default
_TIED_BY_DEFAULT = frozenset({"gpt2", "gemma", "gemma2", "bert", "roberta", "xlm-roberta", "camembert"})
_QKV_BIAS = frozenset({"qwen2", "qwen2_moe"})
_POOLED_SUFFIXES = ("Model", "ForSequenceClassification", "ForNextSentencePrediction", "ForPreTraining")


def _int(config: dict[str, object], *keys: str) -> int | None:
    for key in keys:
        v = config.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


class ArchSpec(BaseModel):
    """The sizes that decide parameter count, KV cache and FLOPs. ``head_dim`` x ``heads`` may differ
    from ``hidden`` (Gemma); ``experts`` is 0 for dense models."""

    model_config = ConfigDict(frozen=True)

    family: Family
    model_type: str
    architecture: str | None = None
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_positions: int | None = None
    tied_embeddings: bool = False
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    shared_expert_intermediate: int = 0
    type_vocab: int = 0
    attention_bias: bool = False
    qkv_bias: bool = False
    mlp_bias: bool = False
    notes: list[str] = []
    convnet: ConvNetSpec | None = None

    @classmethod
    def from_config(cls, config: dict[str, object], source: str = "config.json") -> ArchSpec:
        """Sizes from a config dict (its ``text_config`` for multimodal ones). Raises PlanError on gaps."""
        if config.get("model_type") in CNN_TYPES:
            return cls._from_cnn_config(config, source)
        text = config.get("text_config")
        if isinstance(text, dict) and _int(config, "hidden_size", "d_model", "n_embd") is None:
            merged = dict(text)
            merged.setdefault("architectures", config.get("architectures"))
            config = merged
        model_type = str(config.get("model_type") or "unknown")
        archs = config.get("architectures")
        architecture = str(archs[0]) if isinstance(archs, list) and archs else None
        notes: list[str] = []
        if model_type in _ENCODERS:
            family: Family = "encoder"
        elif model_type == "gpt2":
            family = "gpt2"
        else:
            family = "decoder"
            if model_type not in _DECODERS:
                notes.append(
                    f"model_type {model_type!r} is not one kiln counts exactly; it was counted as a "
                    "llama-style decoder (an estimate)"
                )
        hidden = _int(config, "hidden_size", "d_model", "n_embd")
        layers = _int(config, "num_hidden_layers", "n_layer", "num_layers")
        heads = _int(config, "num_attention_heads", "n_head", "num_heads")
        vocab = _int(config, "vocab_size")
        missing = [
            name
            for name, v in (
                ("hidden_size", hidden),
                ("num_hidden_layers", layers),
                ("num_attention_heads", heads),
                ("vocab_size", vocab),
            )
            if v is None
        ]
        if missing or hidden is None or layers is None or heads is None or vocab is None:
            raise PlanError(
                f"{source} lacks {', '.join(missing)}: kiln plan needs the model's sizes; pass the "
                "model's own config.json (the one transformers reads)"
            )
        kv_heads = _int(config, "num_key_value_heads", "n_head_kv") or (
            1 if config.get("multi_query") is True else heads
        )
        if heads % kv_heads:
            raise PlanError(
                f"{source}: {heads} attention heads cannot share {kv_heads} key/value heads evenly; "
                "check num_key_value_heads"
            )
        head_dim = _int(config, "head_dim") or hidden // heads
        default_inter = 4 * hidden
        intermediate = _int(config, "intermediate_size", "n_inner", "ffn_dim") or default_inter
        experts = _int(config, "num_local_experts", "num_experts", "n_routed_experts") or 0
        per_token = _int(config, "num_experts_per_tok", "moe_topk") or (2 if experts else 0)
        expert_inter = _int(config, "moe_intermediate_size") or intermediate if experts else 0
        shared = _int(config, "shared_expert_intermediate_size") or 0
        n_shared = _int(config, "n_shared_experts") or 0
        if experts and not shared and n_shared:
            shared = n_shared * expert_inter
        tied_raw = config.get("tie_word_embeddings")
        tied = tied_raw if isinstance(tied_raw, bool) else model_type in _TIED_BY_DEFAULT
        if not isinstance(tied_raw, bool) and family == "decoder":
            notes.append(f"tie_word_embeddings not in {source}; assumed {tied} for {model_type}")
        return cls(
            family=family,
            model_type=model_type,
            architecture=architecture,
            hidden=hidden,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate=intermediate,
            vocab=vocab,
            max_positions=_int(config, "max_position_embeddings", "n_positions", "n_ctx"),
            tied_embeddings=tied,
            experts=experts,
            experts_per_token=per_token,
            expert_intermediate=expert_inter,
            shared_expert_intermediate=shared,
            type_vocab=_int(config, "type_vocab_size") or 0,
            attention_bias=config.get("attention_bias") is True,
            qkv_bias=model_type in _QKV_BIAS,
            mlp_bias=config.get("mlp_bias") is True,
            notes=notes,
        )

    @classmethod
    def _from_cnn_config(cls, config: dict[str, object], source: str) -> ArchSpec:
        net = ConvNetSpec.from_config(config, source)
        archs = config.get("architectures")
        return cls(
            family="cnn",
            model_type=str(config.get("model_type")),
            architecture=str(archs[0]) if isinstance(archs, list) and archs else None,
            hidden=net.head,
            layers=len(net.blocks),
            heads=1,
            kv_heads=1,
            head_dim=net.head,
            intermediate=max(b.mid for b in net.blocks),
            vocab=net.classes,
            max_positions=net.image_size,
            convnet=net,
        )

    @property
    def has_kv_cache(self) -> bool:
        """Decoders keep K and V of past tokens; encoders and CNNs run each request whole and keep nothing."""
        return self.family in ("decoder", "gpt2")

    def kv_elements_per_token(self) -> int:
        """K and V elements one token adds to the cache: 2 x layers x kv_heads x head_dim."""
        return 2 * self.layers * self.kv_heads * self.head_dim if self.has_kv_cache else 0


class ParamGroup(BaseModel):
    """Parameters of one kind. ``quantizable``: weight matrices of linear layers (not embeddings, norms,
    biases or the LM head, which quantizers keep at 16 bits). ``active``: parameters one token uses."""

    model_config = ConfigDict(frozen=True)

    name: str
    total: int
    active: int
    quantizable: bool
    detail: str = ""


class ParamBreakdown(BaseModel):
    model_config = ConfigDict(frozen=True)

    groups: list[ParamGroup]

    @property
    def total(self) -> int:
        return sum(g.total for g in self.groups)

    @property
    def active(self) -> int:
        return sum(g.active for g in self.groups)

    @property
    def quantizable(self) -> int:
        return sum(g.total for g in self.groups if g.quantizable)

    @property
    def active_matmul(self) -> int:
        """Parameters a token multiplies with (2 FLOPs each): active, less embedding lookups and norms."""
        return sum(g.active for g in self.groups if g.name not in ("embeddings", "norms"))


def _g(name: str, total: int, quantizable: bool, detail: str, active: int | None = None) -> ParamGroup:
    return ParamGroup(
        name=name,
        total=total,
        active=total if active is None else active,
        quantizable=quantizable,
        detail=detail,
    )


def _decoder(s: ArchSpec) -> list[ParamGroup]:
    h, L, hd = s.hidden, s.layers, s.head_dim
    q_out, kv_out = s.heads * hd, s.kv_heads * hd
    attn_w = h * q_out + 2 * h * kv_out + q_out * h
    attn_b = (q_out + 2 * kv_out) * (s.qkv_bias or s.attention_bias) + h * s.attention_bias
    qk_norm = 2 * hd if s.model_type in ("qwen3", "qwen3_moe") else 0
    groups = [
        _g("embeddings", s.vocab * h, False, f"{s.vocab} x {h}"),
        _g("attention", L * attn_w, True, f"{L} x (q {q_out} + k/v {s.kv_heads}x{hd} + o) x {h}"),
    ]
    if attn_b:
        groups.append(_g("biases", L * attn_b, False, "q/k/v (and o) biases"))
    if s.experts:
        one = 3 * h * s.expert_intermediate
        groups.append(
            _g(
                "experts",
                L * s.experts * one,
                True,
                f"{L} x {s.experts} experts x 3 x {h} x {s.expert_intermediate}; "
                f"{s.experts_per_token} active per token",
                active=L * s.experts_per_token * one,
            )
        )
        groups.append(_g("router", L * h * s.experts, False, f"{L} x {h} x {s.experts}"))
        if s.shared_expert_intermediate:
            groups.append(
                _g("shared experts", L * 3 * h * s.shared_expert_intermediate, True, "always active")
            )
    else:
        mlp = 3 * h * s.intermediate + (2 * s.intermediate + h) * s.mlp_bias
        groups.append(_g("mlp", L * mlp, True, f"{L} x 3 x {h} x {s.intermediate} (gated)"))
    groups.append(_g("norms", L * (2 * h + qk_norm) + h, False, f"{2 * L + 1} RMSNorms of {h}"))
    if not s.tied_embeddings:
        groups.append(_g("lm_head", s.vocab * h, False, f"{h} x {s.vocab} (untied)"))
    return groups


def _gpt2(s: ArchSpec) -> list[ParamGroup]:
    h, L, inner = s.hidden, s.layers, s.intermediate
    pos = s.max_positions or 1024
    attn = h * 3 * h + 3 * h + h * h + h
    mlp = h * inner + inner + inner * h + h
    groups = [
        _g("embeddings", s.vocab * h + pos * h, False, f"tokens {s.vocab} x {h} + positions {pos} x {h}"),
        _g("attention", L * attn, True, f"{L} x fused qkv + proj, with biases"),
        _g("mlp", L * mlp, True, f"{L} x 2 x {h} x {inner}, with biases"),
        _g("norms", L * 4 * h + 2 * h, False, f"{2 * L + 1} LayerNorms of {h}"),
    ]
    if not s.tied_embeddings:
        groups.append(_g("lm_head", s.vocab * h, False, f"{h} x {s.vocab} (untied)"))
    return groups


def _encoder(s: ArchSpec) -> list[ParamGroup]:
    h, L, inner = s.hidden, s.layers, s.intermediate
    pos = s.max_positions or 512
    types = s.type_vocab
    emb = s.vocab * h + pos * h + types * h
    attn = 4 * (h * h + h)
    mlp = h * inner + inner + inner * h + h
    groups = [
        _g("embeddings", emb, False, f"words {s.vocab} + positions {pos} + types {types}, x {h}"),
        _g("attention", L * attn, True, f"{L} x (q, k, v, o) {h} x {h}, with biases"),
        _g("mlp", L * mlp, True, f"{L} x 2 x {h} x {inner}, with biases"),
        _g("norms", L * 4 * h + 2 * h, False, f"{2 * L + 1} LayerNorms of {h}"),
    ]
    arch = s.architecture or "Model"
    if arch.endswith(_POOLED_SUFFIXES):
        groups.append(_g("pooler", h * h + h, True, f"{h} x {h} + bias ({arch})"))
    if arch.endswith(("ForMaskedLM", "ForPreTraining")):
        head = h * h + h + 2 * h + s.vocab
        groups.append(_g("lm_head", head, False, "transform + LayerNorm + output bias (weights tied)"))
    return groups


def _cnn(s: ArchSpec) -> list[ParamGroup]:
    assert s.convnet is not None
    return [_g(name, n, q, how) for name, n, q, how in s.convnet.parameter_groups()]


def count_parameters(spec: ArchSpec) -> ParamBreakdown:
    """Exact parameter count of the architecture ``spec`` describes, by group."""
    if spec.family == "cnn":
        groups = _cnn(spec)
    elif spec.family == "encoder":
        groups = _encoder(spec)
    elif spec.family == "gpt2":
        groups = _gpt2(spec)
    else:
        groups = _decoder(spec)
    return ParamBreakdown(groups=groups)
