"""Continued pre-training: causal LM on plain text, concatenated and cut into data.block_size blocks.

    python train.py stage=pt data=medical_pt
"""
from datasets import Dataset

from medgpt.data.tokenize import tokenize_blocks
from medgpt.stages.sft import build_trainer  # noqa: F401  (same trainer: pre-tokenized blocks with labels)

MODEL_KIND = "causal"
CACHEABLE = True  # prepare() only tokenizes: medgpt.data.cache may reuse its output


def prepare(rows, tokenizer, cfg, settings):
    columns, counts = tokenize_blocks(rows, tokenizer, cfg.data.block_size)
    return Dataset.from_dict(columns), counts
