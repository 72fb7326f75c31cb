"""Reward model: a sequence-classification head (1 label) trained on preference pairs with TRL's RewardTrainer;
pairs are rendered with the model's chat template; eval reports pairwise accuracy (chosen scored above rejected).
Training batches follow stage.batching over each pair's longer side (group_by_length by default: pairs of similar
length share a batch, so less of it is padding; bench/align_throughput.py).

    python train.py stage=rm data=medical_dpo data.max_samples=200
    python train.py stage=ppo stage.reward_model=outputs/runs/rm-tiny-cpu/<stamp>     # use it for RLHF
"""
from typing import Optional

from medgpt.data.tokenize import template_kwargs
from medgpt.stages.dpo import preference_dataset
from medgpt.training.batching import plan_batches, planned_loader
from medgpt.training.guard import guarded

MODEL_KIND = "reward"
CACHEABLE = False  # prepare() does more than tokenize (pairs, prompts): prepared afresh each run


def pair_lengths(row, tokenizer, **kwargs):
    """Tokens of prompt+chosen and prompt+rejected as RewardTrainer renders them (the chat template, the tools)."""
    return [len(tokenizer.apply_chat_template(row["prompt"] + row[side], tools=row.get("tools") or None,
                                              tokenize=True, return_dict=True, **kwargs)["input_ids"])
            for side in ("chosen", "rejected")]


def prepare(rows, tokenizer, cfg, settings):
    """RewardTrainer drops pairs longer than settings.max_length: count them here (none left: the train split stops
    the run, an eval split is dropped; medgpt.data.cache.prepare_split)."""
    from collections import Counter

    kwargs = template_kwargs(settings)
    kept = [r for r in rows if max(pair_lengths(r, tokenizer, **kwargs)) <= settings.max_length]
    return preference_dataset(kept, settings), Counter(pairs=len(kept), dropped_overlong=len(rows) - len(kept))


def trainer_class():
    """RewardTrainer whose training batches follow `batching` (medgpt.training.batching) over the length of each
    pair's longer side (its collator pads chosen and rejected rows together), and whose losses the guard checks."""
    from trl import RewardTrainer

    class BatchedRewardTrainer(guarded(RewardTrainer)):
        def __init__(self, *args, batching: str = "random", tokens_per_batch: Optional[int] = None,
                     batch_seed: int = 0, **kwargs):
            super().__init__(*args, **kwargs)
            self.batch_plan = None
            if batching != "random":  # planned on the dataset as TRL tokenized it
                data = self.train_dataset
                lengths = [max(len(c), len(r)) for c, r in zip(data["chosen_ids"], data["rejected_ids"])]
                self.batch_plan = plan_batches(batching, lengths, self.args.per_device_train_batch_size,
                                               tokens_per_batch, batch_seed)

        def get_train_dataloader(self):
            if self.batch_plan is None:
                return super().get_train_dataloader()
            columns = [c for c in ("chosen_ids", "rejected_ids", "margin") if c in self.train_dataset.column_names]
            return planned_loader(self, self.train_dataset.select_columns(columns), self.batch_plan,
                                  self.data_collator)

    return BatchedRewardTrainer


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
    return trainer_class()(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                           processing_class=tokenizer, callbacks=callbacks, batching=cfg.stage.batching,
                           tokens_per_batch=settings.tokens_per_batch, batch_seed=settings.data_seed)
