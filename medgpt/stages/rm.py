"""Reward model: a sequence-classification head (1 label) trained on preference pairs with TRL's RewardTrainer;
pairs are rendered with the model's chat template; eval reports pairwise accuracy (chosen scored above rejected).

    python train.py stage=rm data=medical_dpo data.max_samples=200
    python train.py stage=ppo stage.reward_model=outputs/runs/rm-tiny-cpu/<stamp>     # use it for RLHF
"""
from medgpt.data.tokenize import template_kwargs
from medgpt.stages.dpo import preference_dataset
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


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
    from trl import RewardTrainer

    return guarded(RewardTrainer)(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                  processing_class=tokenizer, callbacks=callbacks)
