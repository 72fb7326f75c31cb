"""The SFT/PT loss from the labelled positions only: prompt and padding positions never reach the LM head, so
their logits and softmax are never computed (the full-logits loss projects every position onto the vocabulary).
In the last decoder layer the same positions skip the MLP and the query/output projections too: what they would
compute there reaches no loss, and only their keys and values (which later labelled positions attend to) are kept.
The labelled positions go through the LM head a chunk at a time (medgpt.training.fused_loss), so full-vocabulary
logits never exist for all of them at once. Same value and gradients as the model's own loss (tested); measured in
bench/sft_throughput.py (speed) and bench/memory.py (peak memory).

The preference stages get the same head through `add_labelled_lm_head` (TRL's `fused_lm_head=True` contract):
per-token log-probabilities of the completion positions only.

    python train.py stage=sft          # the default; stage.fused_lm_head=true for TRL's fused head instead
"""
from __future__ import annotations

import contextlib
import functools
import types

import torch
import torch.nn.functional as F

from medgpt.modeling.hardware import zero_stage
from medgpt.training.fused_loss import METRICS, linear_cross_entropy, linear_log_probs

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


def labelled_loss_applies(model, deepspeed=None, torch_compile: bool = False) -> bool:
    """Whether a trainer may use this module's loss/head: `supports_labelled_loss`, and neither ZeRO-3 (which gathers
    lm_head's weight only inside its own forward call, which this loss does not make) nor a compiled model (whose
    body this loss would call uncompiled)."""
    return supports_labelled_loss(model) and zero_stage(deepspeed) != 3 and not torch_compile


def trl_head_compacts(device) -> bool:
    """Whether TRL's own fused head (`trl.add_fused_lm_head`) already scores only the labelled positions, with its
    Triton kernels: on CUDA/XPU devices with Triton installed. Elsewhere (CPU) it scores every position, prompt and
    padding included, and medgpt's labelled head is measured faster (bench/align_throughput.py); on such GPUs the two
    have not been compared yet, so TRL's stays."""
    from transformers.utils import is_triton_available

    return getattr(device, "type", str(device)) in ("cuda", "xpu") and is_triton_available()


def last_layer_position_wise(inner) -> list:
    """The last decoder layer's modules that work on each position alone and whose output at a position reaches
    only that position's final hidden state: the dense MLP and the query and output projections (Llama, Qwen,
    Mistral ... layout). None under gradient checkpointing, whose recomputation in backward would run them on
    every position again; none for mixture-of-experts MLPs, whose router statistics cover every position."""
    layers = getattr(inner.model, "layers", None)
    checkpointing = getattr(inner, "is_activation_checkpointing", None)  # transformers 5.24; older: is_gradient_...
    if checkpointing is None:
        checkpointing = getattr(inner, "is_gradient_checkpointing", False)
    if checkpointing or not isinstance(layers, torch.nn.ModuleList) \
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
    head = inner.lm_head
    total = linear_cross_entropy(hidden[:, :-1][keep], head.weight, head.bias, targets[keep])
    return total / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1))


def add_labelled_lm_head(model, metrics: tuple = (), temperature: float = 1.0) -> bool:
    """Give `model` (a causal LM that TRL's preference or GRPO trainers patched with `trl.add_fused_lm_head`) medgpt's
    head for the same public contract: `model(..., labels=labels, fused_lm_head=True)` returns a `FusedCausalLMOutput`
    with per-token log-probabilities of the logits divided by `temperature` (and the `metrics` asked for: entropy,
    mean_logits, is_top1, log_sum_sq_probs; without gradient), without full-vocabulary logits. Unlike TRL's head,
    which scores every position on devices without Triton, only labelled positions (the completion) reach the LM
    head, and in the last decoder layer the prompt positions skip the MLP and the query/output projections. Calls
    it cannot serve (MoE router logits, pre-shifted labels, positional inputs) go to the previous forward. Returns
    False, changing nothing, where `supports_labelled_loss` is false."""
    from trl.trainer.utils import FusedCausalLMOutput

    if not supports_labelled_loss(model) or getattr(model, "medgpt_labelled_head", False):
        return False
    previous = model.forward
    metrics = tuple(m for m in METRICS if m in metrics)

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        if not fused_lm_head or labels is None or shift_labels is not None or args \
                or kwargs.get("output_router_logits") or "input_ids" not in kwargs:
            given = dict(fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                         num_items_in_batch=num_items_in_batch)
            return previous(*args, **{k: v for k, v in given.items() if v not in (None, False)}, **kwargs)
        kwargs["use_cache"] = False
        targets = labels[:, 1:]
        keep = targets != IGNORE
        with only_at(last_layer_position_wise(self), F.pad(keep, (0, 1))):  # position t predicts label t + 1
            hidden = self.model(**kwargs).last_hidden_state
        head = self.lm_head
        per_token = linear_log_probs(hidden[:, :-1][keep], head.weight, head.bias, targets[keep], metrics=metrics,
                                     temperature=temperature)
        fields = {name: x.new_zeros(keep.shape).masked_scatter(keep, x)  # zero where the label is -100, as TRL's
                  for name, x in zip(("log_probs",) + metrics, per_token)}
        count = keep.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-fields["log_probs"].sum() / count, label_mask=keep, **fields)

    model.medgpt_labelled_head = True
    model.forward = types.MethodType(forward, model)
    return True


def pair_log_probs(model, input_ids, attention_mask, labels, chosen_rows: int, nll: str = "", average: bool = False):
    """The preference-pair forward of TRL's ORPO and CPO/SimPO trainers (`concatenated_forward`) through the
    labelled head: rows [chosen..., rejected...], `labels` = the input ids with prompt and padding at -100.
    Returns (log-probabilities of the labelled tokens per row, summed or `average`d; the mean logit of every
    position [rows, seq] without gradient, which is all the trainers log of the logits; the chosen rows' mean NLL
    over the `nll` targets: "sequence" = every attended token (ORPO), "completion" = the labels (CPO), "" = 0)."""
    inner = _unwrap(model)
    targets = labels[:, 1:]
    keep = targets != IGNORE
    nll_targets = torch.zeros_like(keep)
    if nll:
        nll_targets[:chosen_rows] = (attention_mask[:chosen_rows, 1:] == 1) if nll == "sequence" \
            else keep[:chosen_rows]
    scored = keep | nll_targets
    # no last-layer skip here: the logged mean logit covers every position, prompt and padding included
    hidden = inner.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    head = inner.lm_head
    (per_token,) = linear_log_probs(hidden[:, :-1][scored], head.weight, head.bias, input_ids[:, 1:][scored])
    full = per_token.new_zeros(scored.shape).masked_scatter(scored, per_token)
    logps = (full * keep).sum(-1)
    if average:
        logps = logps / keep.sum(-1)
    with torch.no_grad():  # mean over the vocabulary of h @ W.T + b = h @ mean(W) + mean(b)
        mean_logits = (hidden @ head.weight.mean(0)).float() + (0 if head.bias is None else head.bias.float().mean())
    nll_loss = -(full * nll_targets).sum() / nll_targets.sum().clamp(min=1) if nll else full.new_zeros(())
    return logps, mean_logits, nll_loss
