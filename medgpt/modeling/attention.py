"""Variable-length attention for packed rows: one flash kernel over all samples of a packed batch, each sample
attending only to itself, with no block-diagonal mask to build (sdpa pays for one over the whole row).
Registered with transformers' attention interface as "medgpt_varlen"; needs CUDA (torch's varlen_attn, or
flash-attn when installed).

    python train.py stage.args.packing=true stage.args.padding_free=true model.attn_implementation=medgpt_varlen
"""
from __future__ import annotations

import torch

NAME = "medgpt_varlen"


def cu_seqlens_from_positions(position_ids: torch.Tensor):
    """Packed rows (positions restart at 0 per sample) -> cumulative sample starts over all rows, and the longest.
    Each row is treated as its own run of samples, rows laid end to end."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0, as_tuple=False).flatten()
    row_starts = torch.arange(0, flat.numel(), position_ids.shape[-1], device=flat.device)
    starts = torch.unique(torch.cat([starts, row_starts]))
    cu = torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query/key/value (B, H, T, D) -> (B, T, H, D), causal within each packed sample."""
    from torch.nn.attention.varlen import varlen_attn

    batch, heads, length, dim = query.shape
    if kwargs.get("cu_seq_lens_q") is not None:  # given by the collator: no host sync in every layer
        cu, longest = kwargs["cu_seq_lens_q"], kwargs["max_length_q"]
    elif kwargs.get("position_ids") is not None:
        cu, longest = cu_seqlens_from_positions(kwargs["position_ids"])
    else:
        raise ValueError(f"attn_implementation={NAME} needs position_ids (packed rows); enable packing/padding_free")
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    if k.shape[1] != heads:  # grouped-query attention: share each key/value head across its query heads
        k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, window_size=(-1, 0))
    return out.reshape(batch, length, heads, dim), None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(NAME, varlen_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
