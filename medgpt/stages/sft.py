"""Supervised fine-tuning: chat template applied, loss on assistant tokens only (every assistant turn).

    python train.py stage=sft data.train_files=[../shared/data/medicalgpt-samples/medical_sft_1K_format.jsonl]
"""
from datasets import Dataset

from medgpt.data.tokenize import tokenize_chats

MODEL_KIND = "causal"


def prepare(rows, tokenizer, cfg):
    columns, counts = tokenize_chats(rows, tokenizer, cfg.data.max_length or cfg.model.max_length, cfg.data.overlong)
    return Dataset.from_dict(columns), counts


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks):
    from trl import SFTTrainer

    return SFTTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                      processing_class=tokenizer, callbacks=callbacks)
