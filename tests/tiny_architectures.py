"""Tiny configs for every causal-LM architecture transformers lists, built generically from its defaults.

Shared by the architecture matrix test and `scripts/architecture_table.py`. An architecture that cannot
be built tiny on a CPU from a config alone is returned with the reason, never silently dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

VOCAB = 128
HIDDEN = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 64

# Fields set wherever a config has them (names differ between model families).
_SIZES: dict[str, int] = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "n_embd": HIDDEN,
    "d_model": HIDDEN,
    "dim": HIDDEN,
    "embed_dim": HIDDEN,
    "num_hidden_layers": LAYERS,
    "n_layer": LAYERS,
    "n_layers": LAYERS,
    "num_layers": LAYERS,
    "decoder_layers": LAYERS,
    "num_attention_heads": HEADS,
    "n_head": HEADS,
    "n_heads": HEADS,
    "num_heads": HEADS,
    "decoder_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "n_kv_heads": KV_HEADS,
    "num_kv_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "intermediate_size": INTERMEDIATE,
    "ffn_dim": INTERMEDIATE,
    "decoder_ffn_dim": INTERMEDIATE,
    "n_inner": INTERMEDIATE,
    "ffn_hidden_size": INTERMEDIATE,
    "moe_intermediate_size": 16,
    "expert_intermediate_size": 16,
    "shared_expert_intermediate_size": 16,
    "moe_shared_expert_intermediate_size": 16,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "top_k": 2,
    "n_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 8,
    "max_position_embeddings": 256,
    "n_positions": 256,
    "n_ctx": 256,
    "max_seq_len": 256,
    "sliding_window": 16,
    "attention_window": 16,
    "first_k_dense_replace": 1,
    "rotary_dim": HEAD_DIM // 2,
    "num_nextn_predict_layers": 0,
}
_DROP_IF_NONE = {"sliding_window", "attention_window", "q_lora_rank"}  # None there means "feature off"


@dataclass(frozen=True)
class TinyArchitecture:
    model_type: str
    class_name: str
    config: dict | None  # None: cannot be built tiny here; `reason` says why
    reason: str = ""


def causal_lm_architectures() -> list[tuple[str, str]]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items())


def _resize_lists(values: dict, layers: int) -> None:
    """Per-layer lists (layer_types, block types, window sizes) cut or cycled to `layers` entries."""
    for key, value in list(values.items()):
        if (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, (str, int)) for v in value)
            and key.endswith(("layer_types", "_types", "block_types", "layers_block_type"))
        ):
            kinds = list(dict.fromkeys(value))  # keep every kind that appears, so each code path runs
            values[key] = [kinds[i % len(kinds)] for i in range(max(layers, len(kinds)))]


def tiny_config_dict(model_type: str) -> dict:
    """A tiny config for `model_type` as a dict (model_type included), ready for AutoConfig.for_model."""
    from transformers import AutoConfig

    defaults = AutoConfig.for_model(model_type).to_dict()
    values: dict = {}
    for key, size in _SIZES.items():
        if key in defaults and (defaults[key] is not None or key not in _DROP_IF_NONE):
            if isinstance(defaults[key], (int, float)) or defaults[key] is None:
                values[key] = size
    resized = dict(defaults)
    _resize_lists(resized, LAYERS)
    for key in resized:
        if resized[key] != defaults[key]:
            values[key] = resized[key]
    if "layer_types" in values:
        values["num_hidden_layers"] = len(values["layer_types"])
    if "kv_lora_rank" in values and "num_key_value_heads" in values:
        values["num_key_value_heads"] = HEADS  # latent attention (MLA) expands keys to every head
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        if isinstance(defaults.get(key), int) and defaults[key] >= VOCAB:
            values[key] = 0
    values.update(_OVERRIDES.get(model_type, {}))
    values["model_type"] = model_type
    return values


# Where the generic sizes do not fit an architecture's own constraints.
_OVERRIDES: dict[str, dict] = {
    "bert": {"is_decoder": True},
    "bert-generation": {"is_decoder": True},
    "big_bird": {"is_decoder": True, "attention_type": "original_full"},
    "camembert": {"is_decoder": True},
    "data2vec-text": {"is_decoder": True},
    "electra": {"is_decoder": True, "embedding_size": HIDDEN},
    "ernie": {"is_decoder": True},
    "megatron-bert": {"is_decoder": True},
    "rembert": {"is_decoder": True, "input_embedding_size": HIDDEN, "output_embedding_size": HIDDEN},
    "roberta": {"is_decoder": True},
    "roberta-prelayernorm": {"is_decoder": True},
    "roc_bert": {"is_decoder": True},
    "roformer": {"is_decoder": True, "embedding_size": HIDDEN},
    "xlm-roberta": {"is_decoder": True},
    "xlm-roberta-xl": {"is_decoder": True},
    "xmod": {"is_decoder": True, "default_language": "en_XX"},
    "mamba2": {"num_heads": 8, "head_dim": 8, "n_groups": 1, "state_size": 16, "chunk_size": 16, "time_step_rank": 8},
    "bamba": {"mamba_n_heads": 8, "mamba_d_head": 8, "mamba_d_state": 16, "mamba_chunk_size": 16, "attn_layer_indices": [1]},
    "granitemoehybrid": {
        "mamba_n_heads": 8, "mamba_d_head": 8, "mamba_d_state": 16, "mamba_chunk_size": 16,
        "layer_types": ["mamba", "attention"], "num_hidden_layers": 2,
    },
    "falcon_h1": {"mamba_d_ssm": 64, "mamba_n_heads": 8, "mamba_d_head": 8, "mamba_d_state": 16, "mamba_chunk_size": 16},
    "ernie4_5_moe": {"moe_k": 2, "moe_num_shared_experts": 1, "moe_layer_start_index": 1, "moe_layer_end_index": 1},
    "lfm2_moe": {"num_dense_layers": 1, "layer_types": ["conv", "full_attention"], "num_hidden_layers": 2},
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "attention_layers": ["global", "local"], "window_size": 16},
    "reformer": {
        "is_decoder": True, "attention_head_size": 8, "attn_layers": ["local", "lsh"], "axial_pos_shape": [8, 8],
        "axial_pos_embds_dim": [16, 16], "local_attn_chunk_length": 8, "lsh_attn_chunk_length": 8, "num_buckets": 4,
        "feed_forward_size": INTERMEDIATE, "max_position_embeddings": 64,
    },
}


def init_nontrivial(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights with O(1) logits, so a skipped transform after the head moves log-probs visibly.

    transformers' default init (std 0.02) gives near-uniform log-probs on a tiny model, where a missing
    scale or cap changes little; here every matrix gets std 1/sqrt(fan_in) and norms stay at one.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                fan_in = param.shape[-1]
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


MAX_PARAMETERS = 3_000_000
"""More than this after the generic sizes means the architecture has parts the sizes do not reach
(vision towers, audio encoders, fixed-size sub-configs): not tiny, skipped with the count as reason."""


def tiny_architecture(model_type: str, class_name: str) -> TinyArchitecture:
    """The tiny config of one architecture, or the reason it cannot be built tiny here (meta device: free)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        values = tiny_config_dict(model_type)
        kwargs = {k: v for k, v in values.items() if k != "model_type"}
        config = AutoConfig.for_model(model_type, **kwargs)
        if "text_config" in config.to_dict() or "vision_config" in config.to_dict():
            return TinyArchitecture(model_type, class_name, None, "composite config (text plus vision/audio sub-configs)")
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config)
    except ImportError as e:
        return TinyArchitecture(model_type, class_name, None, f"needs a package not installed: {str(e).strip().splitlines()[0][:100]}")
    except Exception as e:  # noqa: BLE001 - the reason is the record
        return TinyArchitecture(model_type, class_name, None, f"config/build refused: {type(e).__name__}: {str(e).strip()[:140]}")
    parameters = sum(p.numel() for p in meta.parameters())
    if parameters > MAX_PARAMETERS:
        return TinyArchitecture(model_type, class_name, None, f"not tiny with generic sizes ({parameters:,} parameters)")
    return TinyArchitecture(model_type, class_name, config.to_dict())


def build_trained(arch: TinyArchitecture, seed: int = 0) -> torch.nn.Module:
    """The tiny model with O(1)-scale random weights after one real AdamW step (fp32, eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(arch.config)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    init_nontrivial(model, seed)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(seed + 1))
    try:
        model.train()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.optim.AdamW(model.parameters(), lr=1e-2).step()
    except Exception:  # noqa: BLE001 - a forward without a loss: random weights are enough to show bugs
        pass
    model.zero_grad(set_to_none=True)
    return model.eval()


@torch.no_grad()
def direct_logprobs(model: torch.nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """The trainer's reference: log_softmax(model(ids).logits.float()) gathered at the next token → [T−1]."""
    logits = model(input_ids=token_ids[None], use_cache=False).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(1, token_ids[1:, None]).squeeze(1)


@dataclass(frozen=True)
class Measured:
    model_type: str
    class_name: str
    path: str  # the log-prob path the backend's probe chose, "refused", or "skipped"
    max_error: float | None  # max |served − direct forward| in nats
    note: str = ""


def measure(arch: TinyArchitecture, length: int = 40, seed: int = 0) -> Measured:
    """Builds the architecture, serves it through TorchBackend exactly as the server does (build, load
    the version's weights, probe), and compares every scored position with a direct forward."""
    import numpy as np

    from logit_service.backends.torch_backend import ScoreItem, TorchBackend
    from logit_service.errors import ModelRejected

    if arch.config is None:
        return Measured(arch.model_type, arch.class_name, "skipped", None, arch.reason)
    tokens = torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed + 2))
    try:
        model = build_trained(arch, seed)
        expected = direct_logprobs(model, tokens)
    except Exception as e:  # noqa: BLE001 - the tiny sizes break this architecture's own forward
        reason = f"its own forward fails at the generic tiny sizes: {type(e).__name__}: {str(e)[:120]}"
        return Measured(arch.model_type, arch.class_name, "skipped", None, reason)
    backend = TorchBackend(logprob_chunk_tokens=16)  # several chunks per sequence
    try:
        backend.prepare(arch.config, config_hash=None, key="0", digest="d", state_dict=model.state_dict())
    except ModelRejected as e:
        return Measured(arch.model_type, arch.class_name, "refused", None, e.message[:200])
    (served,) = backend.score([ScoreItem(tokens.numpy().astype(np.int64), np.arange(1, length))])
    error = float(np.abs(served - expected.numpy()).max())
    return Measured(arch.model_type, arch.class_name, backend.path.name, error, backend.probe.describe())
