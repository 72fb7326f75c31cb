"""Causal-LM loss without full-vocabulary logits: only positions that carry a label are projected, a chunk at
a time, each chunk recomputed in backward (checkpointed). A 32 x 1024 batch with a 151,936-token vocabulary
would otherwise hold ~20 GB of fp32 logits (the OOM MedicalGPT hits on a 141 GB H200).

    python train.py stage.chunked_loss=true        # SFT/PT; same loss value, same gradients
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.T).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, num_items: int | None = None,
                    chunk_size: int = 4096) -> torch.Tensor:
    """hidden (B, T, H) final hidden states, weight (V, H) of lm_head, labels (B, T) unshifted with -100.
    Returns the mean over labelled tokens (or sum / num_items, for gradient accumulation across micro-batches)."""
    targets = labels[:, 1:].reshape(-1)
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    keep = targets != IGNORE
    states, targets = states[keep], targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_size):
        end = start + chunk_size
        total = total + checkpoint(_chunk_loss, states[start:end], weight, targets[start:end], use_reentrant=False)
    denominator = num_items if num_items is not None else max(int(keep.sum()), 1)
    return total / denominator


def causal_lm_chunked_forward(model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """Run the decoder body of a causal LM (plain, PEFT- or DDP-wrapped) and return the chunked loss."""
    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    body_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = inner.model(**body_inputs, use_cache=False).last_hidden_state
    num_items = int(num_items_in_batch) if num_items_in_batch is not None else None
    return chunked_lm_loss(hidden, inner.lm_head.weight, inputs["labels"], num_items)
