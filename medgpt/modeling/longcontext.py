"""Long context: RoPE scaling (linear / dynamic NTK / YaRN, factor computed from the run's max_length when asked) and
S²-Attn, LongLoRA's shifted sparse attention, as a training-only attention registered with transformers.

    python train.py model=qwen2.5-7b model.max_length=16384 model.rope_scaling='{type: yarn, factor: auto}'
    python train.py model=llama3-8b hardware=lora model.attn_implementation=s2attn model.max_length=16384

S²-Attn (Chen et al. 2023, LongLoRA): during training each sequence is cut into groups of a quarter of its length and
attention runs inside each group; half of the heads see the groups shifted by half a group, so information flows
between neighbouring groups. It only applies while the module is in training mode: evaluation, generation and any
model loaded from the saved folder use ordinary full attention (sdpa), as LongLoRA intends.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Optional

from medgpt.errors import UserError

log = logging.getLogger(__name__)
ROPE_TYPES = ("linear", "dynamic", "yarn")
S2ATTN = "s2attn"
S2ATTN_GROUP_RATIO = 0.25  # group = a quarter of the sequence, as in LongLoRA
S2ATTN_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")  # plain causal RoPE attention, no sliding window needed


def rope_settings(rope_cfg: Dict[str, Any], max_length: int, rope_parameters: Optional[dict],
                  max_position_embeddings: int) -> Dict[str, Any]:
    """Config overrides for RoPE scaling. rope_cfg = {type, factor: <number> | auto, ...extra rope keys};
    factor auto = max_length / the model's trained context. Returns {} when auto finds no scaling is needed."""
    rope_cfg = dict(rope_cfg)
    rope_type = rope_cfg.pop("type", None) or rope_cfg.pop("rope_type", None)
    if rope_type not in ROPE_TYPES:
        raise UserError(f"model.rope_scaling.type={rope_type}: use one of {', '.join(ROPE_TYPES)}")
    base = dict(rope_parameters or {})
    original = int(base.get("original_max_position_embeddings") or max_position_embeddings)
    factor = rope_cfg.pop("factor", "auto")
    if factor == "auto":
        factor = max_length / original
        if factor <= 1:
            log.info("rope_scaling: max_length=%d fits the trained context (%d): no scaling", max_length, original)
            return {}
        factor = math.ceil(factor * 100) / 100  # 2 decimals, rounded up so max_length always fits
    try:
        factor = float(factor)
    except (TypeError, ValueError):
        raise UserError(f"model.rope_scaling.factor={factor}: use a number > 1 or auto") from None
    if factor <= 1:
        raise UserError(f"model.rope_scaling.factor={factor}: scaling needs a factor > 1 (or factor: auto)")
    params = {**base, **rope_cfg, "rope_type": rope_type, "factor": factor}
    out: Dict[str, Any] = {"rope_parameters": params}
    if rope_type == "dynamic":  # dynamic NTK reads the trained context from max_position_embeddings itself
        return out
    if rope_type == "yarn":
        params["original_max_position_embeddings"] = original
    out["max_position_embeddings"] = int(original * factor)
    return out


def load_kwargs(model_cfg, path: str, max_length: int) -> Dict[str, Any]:
    """Extra from_pretrained kwargs for model.rope_scaling and model.attn_implementation=s2attn (reads config.json
    only; raises UserError before any weights load). max_length: the run's (RunSettings.max_length), for factor auto."""
    if not model_cfg.rope_scaling and model_cfg.attn_implementation != S2ATTN:
        return {}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    out: Dict[str, Any] = {}
    if model_cfg.rope_scaling:
        if not hasattr(config, "rope_parameters"):
            raise UserError(f"model.rope_scaling: {config.model_type} models do not use transformers' RoPE "
                            f"parameters; set rope scaling in that model's own config instead")
        out = rope_settings(model_cfg.rope_scaling, max_length, config.rope_parameters,
                            config.max_position_embeddings)
        log.info("rope_scaling: %s", out)
    if model_cfg.attn_implementation == S2ATTN:
        if config.model_type not in S2ATTN_MODEL_TYPES:
            raise UserError(f"model.attn_implementation=s2attn supports {', '.join(S2ATTN_MODEL_TYPES)} models, "
                            f"not {config.model_type}; use sdpa")
        register_s2attn()
    return out


def shifted_sparse_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: Optional[float] = None, **kwargs):
    """transformers attention function: query (B, H, N, D), key/value (B, Hkv, N, D) -> ((B, N, H, D), None).
    Outside training it is exactly sdpa attention."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, length, dim = query.shape
    group = max(2, math.ceil(length * S2ATTN_GROUP_RATIO))
    n_groups = math.ceil(length / group)
    shift = group // 2
    key = repeat_kv(key, heads // key.shape[1])
    value = repeat_kv(value, heads // value.shape[1])

    def to_groups(x):
        # half of the heads look at groups shifted by half a group (LongLoRA's shift); the tail is padded with
        # zeros after the shift, so padding only ever sits after every real token of its group (causal: unseen)
        x = torch.cat([x[:, :heads // 2], x[:, heads // 2:].roll(-shift, dims=2)], dim=1)
        x = torch.nn.functional.pad(x, (0, 0, 0, n_groups * group - length))
        return x.reshape(batch, heads, n_groups, group, dim).transpose(1, 2).reshape(batch * n_groups, heads, group,
                                                                                    dim)

    # padding masks are not applied inside groups: with right padding (TRL's default) pads follow the real tokens
    out = torch.nn.functional.scaled_dot_product_attention(
        to_groups(query), to_groups(key), to_groups(value), is_causal=True, scale=scaling, dropout_p=dropout)
    out = out.reshape(batch, n_groups, heads, group, dim).transpose(1, 2).reshape(batch, heads, -1, dim)[:, :, :length]
    out = torch.cat([out[:, :heads // 2], out[:, heads // 2:].roll(shift, dims=2)], dim=1)
    return out.transpose(1, 2).contiguous(), None


def register_s2attn() -> None:
    """Make attn_implementation="s2attn" known to transformers (attention + the sdpa mask for eval/generation)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(S2ATTN, shifted_sparse_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(S2ATTN, sdpa_mask)
