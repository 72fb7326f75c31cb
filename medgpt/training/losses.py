"""The SFT/PT loss from the labelled positions only: prompt and padding positions never reach the LM head, so
their logits and softmax are never computed (the full-logits loss projects every position onto the vocabulary).
In the last decoder layer the same positions skip the MLP and the query/output projections too: what they would
compute there reaches no loss, and only their keys and values (which later labelled positions attend to) are kept.
Same value and gradients as the model's own loss (tested); measured faster in bench/sft_throughput.py.

    python train.py stage=sft          # the default; stage.fused_lm_head=true for TRL's fused head instead
"""
from __future__ import annotations

import contextlib

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


def last_layer_position_wise(inner) -> list:
    """The last decoder layer's modules that work on each position alone and whose output at a position reaches
    only that position's final hidden state: the dense MLP and the query and output projections (Llama, Qwen,
    Mistral ... layout). None under gradient checkpointing, whose recomputation in backward would run them on
    every position again; none for mixture-of-experts MLPs, whose router statistics cover every position."""
    layers = getattr(inner.model, "layers", None)
    if getattr(inner, "is_gradient_checkpointing", False) or not isinstance(layers, torch.nn.ModuleList) \
            or not len(layers):
        return []
    last = layers[-1]
    attention, mlp = getattr(last, "self_attn", None), getattr(last, "mlp", None)
    modules = [m for m in (getattr(attention, "q_proj", None), getattr(attention, "o_proj", None))
               if isinstance(m, torch.nn.Module)]
    if hasattr(mlp, "down_proj") and not hasattr(mlp, "experts"):
        modules.append(mlp)
    return modules


@contextlib.contextmanager
def only_at(modules, keep: torch.Tensor):
    """Run each module on the positions where `keep` ([batch, seq]) is true; its output elsewhere is zero.
    A module called without a positional input runs on every position, as before."""
    def gather(module, args):
        return (args[0][keep].unsqueeze(0),) + args[1:] if args else None

    def scatter(module, args, out):
        if out.shape[:-1] == keep.shape:
            return out
        full = out.new_zeros(keep.shape + out.shape[-1:])
        full[keep] = out[0]
        return full

    handles = [h for m in modules for h in (m.register_forward_pre_hook(gather), m.register_forward_hook(scatter))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def labelled_positions_loss(model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """Mean next-token loss over labelled positions (or sum / num_items_in_batch, for gradient accumulation)."""
    inner = _unwrap(model)
    body = {k: v for k, v in inputs.items() if k != "labels"}
    targets = inputs["labels"][:, 1:]
    keep = targets != IGNORE
    with only_at(last_layer_position_wise(inner), F.pad(keep, (0, 1))):  # position t predicts label t + 1
        hidden = inner.model(**body, use_cache=False).last_hidden_state
    logits = inner.lm_head(hidden[:, :-1][keep]).float()
    total = F.cross_entropy(logits, targets[keep], reduction="sum")
    return total / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1))
