"""Reward model: a sequence-classification head (1 label) trained on preference pairs with TRL's RewardTrainer;
pairs are rendered with the model's chat template; eval reports pairwise accuracy (chosen scored above rejected).

    python train.py stage=rm data=medical_dpo data.max_samples=200
    python train.py stage=ppo stage.reward_model=outputs/runs/rm-tiny-cpu/<stamp>     # use it for RLHF
"""
from medgpt.stages.dpo import preference_dataset

MODEL_KIND = "reward"


def prepare(rows, tokenizer, cfg):
    from collections import Counter

    return preference_dataset(rows), Counter(pairs=len(rows))


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks):
    from trl import RewardTrainer

    return RewardTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, callbacks=callbacks)
