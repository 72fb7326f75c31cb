"""How samples become batches. Padding is wasted compute: MedicalGPT's random batches are ~46% padding on its
own SFT sample; grouping by length cuts that to ~2%, and a token budget per batch (many short samples, few
long ones) also keeps every step the same size in tokens.

    stage.batching=token_budget (default) | group_by_length | random ;  stage.tokens_per_batch=4096
"""
from __future__ import annotations

import random
from typing import Iterator, List, Sequence

import torch

from medgpt.errors import UserError

STRATEGIES = ("token_budget", "group_by_length", "random")


def random_batches(n: int, batch_size: int, rng: random.Random) -> List[List[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random,
                           megabatch: int = 50) -> List[List[int]]:
    """As transformers' LengthGroupedSampler: random megabatches of 50 batches, sorted by length inside."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = batch_size * megabatch
    batches = []
    for start in range(0, len(order), size):
        mega = sorted(order[start:start + size], key=lambda i: -lengths[i])
        batches += [mega[i:i + batch_size] for i in range(0, len(mega), batch_size)]
    return batches


def token_budget_batches(lengths: Sequence[int], max_tokens: int, rng: random.Random,
                         megabatch_tokens: int | None = None) -> List[List[int]]:
    """Sort random megabatches by length, then cut batches whose padded size (rows x longest) fits max_tokens.
    A sample longer than max_tokens gets a batch of its own."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    megabatch_tokens = megabatch_tokens or max_tokens * 64
    batches, mega, mega_tokens = [], [], 0
    for i in order + [None]:
        if i is not None:
            mega.append(i)
            mega_tokens += lengths[i]
        if mega and (i is None or mega_tokens >= megabatch_tokens):
            mega.sort(key=lambda j: -lengths[j])
            batch: List[int] = []
            for j in mega:
                longest = lengths[batch[0]] if batch else lengths[j]
                if batch and longest * (len(batch) + 1) > max_tokens:
                    batches.append(batch)
                    batch = []
                batch.append(j)
            batches.append(batch)
            mega, mega_tokens = [], 0
    return batches


def padding_fraction(lengths: Sequence[int], batches: List[List[int]]) -> float:
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths) / padded if padded else 0.0


class BatchPlan(torch.utils.data.Sampler):
    """A fixed set of batches (built once, so the epoch length never changes) served in a seeded order that
    changes with the epoch; a DataLoader `batch_sampler`. accelerate shards it across ranks."""

    def __init__(self, batches: List[List[int]], seed: int):
        self.batches, self.seed, self.epoch = batches, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[List[int]]:
        order = list(range(len(self.batches)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return (self.batches[i] for i in order)

    def __len__(self) -> int:
        return len(self.batches)


def plan_batches(strategy: str, lengths: Sequence[int], batch_size: int, max_tokens: int, seed: int) -> BatchPlan:

    rng = random.Random(seed)
    if strategy == "token_budget":
        if max_tokens < 1:
            raise UserError(f"stage.tokens_per_batch={max_tokens}: give a positive number of tokens")
        return BatchPlan(token_budget_batches(lengths, max_tokens, rng), seed)
    if strategy == "group_by_length":
        return BatchPlan(length_grouped_batches(lengths, batch_size, rng), seed)
    if strategy == "random":
        return BatchPlan(random_batches(len(lengths), batch_size, rng), seed)
    raise UserError(f"stage.batching={strategy}: use one of {', '.join(STRATEGIES)}")


def planned_loader(trainer, dataset, plan: BatchPlan, collate) -> "torch.utils.data.DataLoader":
    """`trainer`'s training DataLoader serving `plan`'s batches of `dataset` (a batch_sampler), with the trainer's
    worker settings, prepared by its accelerator as Trainer.get_train_dataloader prepares its own."""
    return trainer.accelerator.prepare(torch.utils.data.DataLoader(
        dataset, batch_sampler=plan, collate_fn=collate, num_workers=trainer.args.dataloader_num_workers,
        pin_memory=trainer.args.dataloader_pin_memory))


def drop_causal_padding_mask(batch: dict) -> dict:
    """Right padding never reaches a real token under causal attention (pads come after it), and pads carry
    label -100: so the padding mask is redundant in training. Without it attention takes the fast causal kernel
    instead of a masked one. Plain positions (0..L-1 in every row) stand in for it, which is what the model would
    use anyway and what TRL counts tokens from. Left-padded or holey masks are kept."""
    mask = batch.get("attention_mask")
    if mask is None or "position_ids" in batch or not bool((mask[:, 1:] <= mask[:, :-1]).all()):
        return batch
    out = {k: v for k, v in batch.items() if k != "attention_mask"}
    # repeat, not expand: a DataLoader pins each tensor on a GPU box, and pinning writes to a stride-0 view fail
    out["position_ids"] = torch.arange(mask.shape[1], device=mask.device).repeat(mask.shape[0], 1)
    return out


def collate_without_causal_padding_mask(collate, rows):
    """A DataLoader collate_fn (use with functools.partial): the wrapped collator's batch, padding mask dropped."""
    return drop_causal_padding_mask(collate(rows))


def pad_collate(examples: List[dict], pad_id: int) -> dict:
    """Right-pad input_ids / labels (-100) to the longest in the batch; attention mask marks real tokens."""
    longest = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.as_tensor(e["input_ids"])
        labels[row, :n] = torch.as_tensor(e.get("labels", e["input_ids"]))
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
