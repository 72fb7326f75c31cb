"""Model-side maths of evaluation: summed log-probabilities of labelled tokens, reward scores, greedy answers.

Every scorer takes already-tokenized examples, batches them by length and runs without gradients.

    from medgpt.evaluation.scoring import token_logprobs   # [(ids, labels)] -> [(sum log p, n labelled)]
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

IGNORE = -100
Example = Tuple[List[int], List[int]]  # input ids, labels (-100 where not scored)


def device_of(model):
    return next(model.parameters()).device


def batches(lengths: Sequence[int], batch_size: int):
    """Index batches of similar length (less padding); callers put results back in the original order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def pad(rows: List[List[int]], value: int, left: bool = False):
    import torch

    width = max(map(len, rows))
    padded = [([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows]
    return torch.tensor(padded)


def token_logprobs(model, examples: List[Example], pad_id: int, batch_size: int = 8) -> List[Tuple[float, int]]:
    """Per example: (sum of log p(token) over labelled tokens, number of labelled tokens)."""
    import torch

    out: List[Tuple[float, int]] = [(0.0, 0)] * len(examples)
    device = device_of(model)
    with torch.inference_mode():
        for batch in batches([len(e[0]) for e in examples], batch_size):
            ids = pad([examples[i][0] for i in batch], pad_id).to(device)
            labels = pad([examples[i][1] for i in batch], IGNORE).to(device)
            mask = pad([[1] * len(examples[i][0]) for i in batch], 0).to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            target = labels[:, 1:]
            logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            scored = target != IGNORE
            sums, counts = (logp * scored).sum(-1).tolist(), scored.sum(-1).tolist()
            for j, i in enumerate(batch):
                out[i] = (sums[j], int(counts[j]))
    return out


def reward_scores(model, sequences: List[List[int]], pad_id: int, batch_size: int = 8) -> List[float]:
    """A reward model's scalar for each token sequence (right padding: it reads the last non-pad token)."""
    import torch

    out = [0.0] * len(sequences)
    device = device_of(model)
    with torch.inference_mode():
        for batch in batches([len(s) for s in sequences], batch_size):
            ids = pad([sequences[i] for i in batch], pad_id).to(device)
            mask = pad([[1] * len(sequences[i]) for i in batch], 0).to(device)
            scores = model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
            for j, i in enumerate(batch):
                out[i] = scores[j]
    return out


def generate(model, prompts: List[List[int]], *, pad_id: int, stop_ids: List[int], max_new_tokens: int,
             batch_size: int = 8) -> List[List[int]]:
    """Greedy continuation of each prompt (left padded), cut at the first stop token; returns new token ids."""
    import torch

    out: List[List[int]] = [[] for _ in prompts]
    device = device_of(model)
    with torch.inference_mode():
        for batch in batches([len(p) for p in prompts], batch_size):
            ids = pad([prompts[i] for i in batch], pad_id, left=True).to(device)
            mask = pad([[1] * len(prompts[i]) for i in batch], 0, left=True).to(device)
            new = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stop_ids, pad_token_id=pad_id, use_cache=True)[:, ids.shape[1]:]
            for j, i in enumerate(batch):
                tokens = new[j].tolist()
                cut = next((k for k, t in enumerate(tokens) if t in stop_ids), len(tokens))
                out[i] = tokens[:cut]
    return out
