"""Memory-bounded LM head: cross-entropy and per-token log-probabilities of `hidden @ weight.T` computed a chunk of
rows at a time, so the `[tokens x vocabulary]` logits never exist for all positions at once (at Qwen3's 151,669-token
vocabulary, 4 x 4096 labelled positions would hold 10 GB of fp32 logits, and as much again for their gradient).

- `linear_cross_entropy`: the summed next-token loss (SFT, PT). Each chunk's gradient is computed in the forward pass,
  while its logits exist (the backward only scales it), so it does the same matrix products as the unfused loss.
  On CUDA with `liger-kernel` installed (`pip install medgpt[liger]`) Liger's fused kernel does it instead.
- `linear_log_probs`: the log-probability of each target (DPO/IPO, KTO, GRPO: the trainers' `fused_lm_head=True`
  contract, see medgpt.training.losses.add_labelled_lm_head), at a sampling temperature where GRPO asks for one. The
  backward recomputes each chunk's logits, since its per-token gradient arrives only then.

Both are pure PyTorch `torch.autograd.Function`s: CPU and GPU alike. Used by medgpt.training.losses (SFT/PT), the
preference stages (medgpt/stages/dpo.py, kto.py) and GRPO (medgpt/stages/grpo.py); measured in bench/memory.py,
bench/align_throughput.py and docs/performance.md.

    python train.py stage=sft model=qwen3-0.6b model.path=<a model with Qwen3's vocabulary>    # the default loss
"""
from __future__ import annotations

import torch

IGNORE = -100
CHUNK_ELEMENTS = 2 ** 25  # logits per chunk: 128 MB in fp32 (a 151,669-token vocabulary: 221 rows per chunk)
METRICS = ("entropy", "mean_logits", "is_top1", "log_sum_sq_probs")  # what TRL's trainers may ask besides log_probs


def rows_per_chunk(vocab: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    return max(1, chunk_elements // max(vocab, 1))


def _logits(hidden, weight, bias):
    out = hidden @ weight.t()
    if bias is not None:
        out = out + bias
    return out.float()  # as the model's own loss: logits upcast to fp32 before the softmax


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i -log softmax(hidden_i @ weight.T + bias)[target_i], a chunk of rows at a time; the gradients are computed
    in forward (each chunk's softmax minus the one-hot target, projected back) and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows: int, grad_enabled: bool = True):
        needs_h, needs_w, needs_b = (grad_enabled and need for need in ctx.needs_input_grad[:3])
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_h = torch.empty_like(hidden) if needs_h else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if needs_w else None
        grad_b = torch.zeros(bias.shape, device=bias.device, dtype=torch.float32) if needs_b else None
        for start in range(0, hidden.shape[0], chunk_rows):
            h, t = hidden[start:start + chunk_rows], targets[start:start + chunk_rows]
            logits = _logits(h, weight, bias)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t.unsqueeze(1)).squeeze(1)).sum()
            if not (needs_h or needs_w or needs_b):
                continue
            grad = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
            grad[torch.arange(t.numel(), device=t.device), t] -= 1
            grad = grad.to(weight.dtype)
            if needs_h:
                torch.mm(grad, weight, out=grad_h[start:start + chunk_rows]) if grad_h.dtype == weight.dtype \
                    else grad_h[start:start + chunk_rows].copy_(grad @ weight)
            if needs_w:
                grad_w.addmm_(grad.t().float(), h.float()) if weight.dtype != torch.float32 \
                    else grad_w.addmm_(grad.t(), h)
            if needs_b:
                grad_b += grad.sum(0, dtype=torch.float32)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.has = (needs_h, needs_w, needs_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        saved = iter(ctx.saved_tensors)
        grads = []
        for has, dtype in zip(ctx.has, ctx.dtypes):
            grads.append((next(saved) * grad_output).to(dtype) if has else None)
        return grads[0], grads[1], grads[2], None, None, None


def _liger():
    """Liger's fused linear cross-entropy, where it is installed (CUDA only); else None."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor,
                         chunk_rows: int = 0) -> torch.Tensor:
    """Summed cross-entropy of rows `hidden` [N, H] through the LM head `weight` [V, H] (+ `bias`) at `targets` [N]
    (every target valid); never more than `chunk_rows` rows of logits at once (default: CHUNK_ELEMENTS logits)."""
    if hidden.is_cuda and _liger() is not None and targets.numel():
        return _liger()(hidden, weight, targets, bias=bias, reduction="sum")
    return LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_rows or rows_per_chunk(weight.shape[0]),
                                    torch.is_grad_enabled())  # no gradient work under torch.no_grad()


class LinearLogProbs(torch.autograd.Function):
    """log softmax(scale * (hidden_i @ weight.T + bias))[target_i] for each row (scale = 1 / the sampling temperature),
    a chunk of rows at a time, plus (without gradient) the metrics TRL's trainers log; the backward recomputes each
    chunk's logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows: int, metrics: tuple, scale: float = 1.0):
        n = hidden.shape[0]
        log_probs = torch.empty(n, device=hidden.device, dtype=torch.float32)
        lses = torch.empty(n, device=hidden.device, dtype=torch.float32)
        extra = {name: torch.empty(n, device=hidden.device, dtype=torch.bool if name == "is_top1" else torch.float32)
                 for name in metrics}
        for start in range(0, n, chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = _logits(hidden[rows], weight, bias)
            if scale != 1.0:
                logits.mul_(scale)
            if "entropy" in extra or "log_sum_sq_probs" in extra:
                # one exponential pass serves the normaliser and the metrics: e = exp(logits - max) <= 1, sum(e) >= 1
                top = logits.amax(-1, keepdim=True)
                e = (logits - top).exp_()
                total = e.sum(-1)
                lse = top.squeeze(1) + total.log()
                if "log_sum_sq_probs" in extra:  # log sum p^2 = 2 log |e| - 2 log sum e
                    extra["log_sum_sq_probs"][rows] = 2 * (torch.linalg.vector_norm(e, dim=-1).log() - total.log())
                if "entropy" in extra:  # H = lse - sum(p * logits); in place: no third chunk-sized tensor
                    extra["entropy"][rows] = lse - e.mul_(logits).sum(-1) / total
                del e
            else:
                lse = torch.logsumexp(logits, dim=-1)
            target = logits.gather(1, targets[rows].unsqueeze(1)).squeeze(1)
            lses[rows], log_probs[rows] = lse, target - lse
            if "mean_logits" in extra:
                extra["mean_logits"][rows] = logits.mean(-1)
            if "is_top1" in extra:  # the target is the first maximum (as TRL's is_top1)
                extra["is_top1"][rows] = logits.argmax(-1) == targets[rows]
        ctx.save_for_backward(hidden, weight, bias, targets, lses)
        ctx.chunk_rows, ctx.scale = chunk_rows, scale
        ctx.mark_non_differentiable(*extra.values())
        return (log_probs, *extra.values())

    @staticmethod
    def backward(ctx, grad_log_probs, *unused):
        hidden, weight, bias, targets, lses = ctx.saved_tensors
        needs_h, needs_w, needs_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if needs_h else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if needs_w else None
        grad_b = torch.zeros(bias.shape, device=bias.device, dtype=torch.float32) if needs_b else None
        if grad_log_probs is None or not (needs_h or needs_w or needs_b):
            return None, None, None, None, None, None, None
        for start in range(0, hidden.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            h, t, g = hidden[rows], targets[rows], grad_log_probs[rows].float()
            # d log p_target / d logits = scale * (onehot(target) - softmax), times the incoming per-token gradient
            logits = _logits(h, weight, bias)
            if ctx.scale != 1.0:
                logits.mul_(ctx.scale)
                g = g * ctx.scale
            grad = logits.sub_(lses[rows].unsqueeze(1)).exp_().mul_(-g.unsqueeze(1))
            grad[torch.arange(t.numel(), device=t.device), t] += g
            grad = grad.to(weight.dtype)
            if needs_h:
                grad_h[rows] = grad @ weight
            if needs_w:
                grad_w.addmm_(grad.t().float(), h.float())
            if needs_b:
                grad_b += grad.sum(0, dtype=torch.float32)
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None)


def linear_log_probs(hidden, weight, bias, targets, chunk_rows: int = 0, metrics: tuple = (),
                     temperature: float = 1.0):
    """(log-probabilities [N], *metrics [N] each) of `targets` under rows `hidden` [N, H] through `weight` [V, H],
    the logits divided by `temperature` (GRPO scores completions at the temperature that sampled them)."""
    return LinearLogProbs.apply(hidden, weight, bias, targets, chunk_rows or rows_per_chunk(weight.shape[0]),
                                tuple(m for m in metrics if m in METRICS), 1.0 / temperature)
