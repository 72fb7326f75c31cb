"""The SFT/PT loss from the labelled positions only: prompt and padding positions never reach the LM head, so
their logits and softmax are never computed (the full-logits loss projects every position onto the vocabulary).
Same value and gradients as the model's own loss (tested); measured faster in bench/sft_throughput.py.

    python train.py stage=sft          # the default; stage.fused_lm_head=true for TRL's fused head instead
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def _unwrap(model):
    inner = getattr(model, "module", model)  # DDP
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT


def supports_labelled_loss(model) -> bool:
    """A decoder body at .model and a plain lm_head: no logit soft-capping or scaling (Gemma 2, Cohere), which
    this loss would skip, and no quantized base (its dtype casts live in the model's own forward)."""
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    return (hasattr(inner, "model") and isinstance(getattr(inner, "lm_head", None), torch.nn.Linear)
            and not getattr(config, "final_logit_softcapping", None) and not getattr(config, "logit_scale", None)
            and not getattr(inner, "is_quantized", False) and not getattr(config, "quantization_config", None))


def labelled_positions_loss(model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """Mean next-token loss over labelled positions (or sum / num_items_in_batch, for gradient accumulation)."""
    inner = _unwrap(model)
    body = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = inner.model(**body, use_cache=False).last_hidden_state
    targets = inputs["labels"][:, 1:]
    keep = targets != IGNORE
    logits = inner.lm_head(hidden[:, :-1][keep]).float()
    total = F.cross_entropy(logits, targets[keep], reduction="sum")
    return total / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1))
