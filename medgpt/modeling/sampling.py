"""Sampling the next token without `torch.multinomial`, whose CPU kernel draws one exponential variate per
vocabulary entry with a slow generator: at Qwen3's 151,669-token vocabulary, softmax and draw take 10.6 ms for 4 rows
on one core, against 2.5 ms here (docs/performance.md). `sampling_processors` is a `LogitsProcessorList` for greedy
`generate()` (do_sample=False) that applies the sampling warpers in transformers' order, then draws the token by the
same exponential race that `torch.multinomial` runs, with -log(U) for the exponentials: the same distribution.

    python train.py stage=grpo data=medical_grpo      # on a CPU, GRPO's rollouts (medgpt.training.rollout) use it
"""
from __future__ import annotations

from typing import Optional

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)


class ExponentialRace(LogitsProcessor):
    """Draws each row's next token from softmax(scores): argmax_i p_i / E_i with E_i ~ Exp(1) picks i with probability
    p_i. Returns scores that are 0 at the drawn token and -inf elsewhere, so greedy decoding emits it. Uses torch's
    global generator, as sampling in `generate()` does (seeded runs and resumed runs repeat their draws)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = scores.float().softmax(-1)
        keys = probs.div_(torch.rand_like(probs).log_().neg_())  # -log U ~ Exp(1)
        return torch.full_like(scores, float("-inf")).scatter_(1, keys.argmax(-1, keepdim=True), 0.0)


def sampling_processors(temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                        min_p: Optional[float] = None) -> LogitsProcessorList:
    """What `generate(do_sample=True, temperature=..., top_k=..., top_p=..., min_p=...)` applies after its other
    processors, in its order, ending with the draw: pass it with do_sample=False."""
    warpers = []
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k=top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p))
    if min_p is not None:
        warpers.append(MinPLogitsWarper(min_p=min_p))
    return LogitsProcessorList([*warpers, ExponentialRace()])
