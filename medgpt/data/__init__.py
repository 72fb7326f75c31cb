"""Data: read files or a hub dataset -> detect format -> convert and validate -> split. No model needed.

    python -m medgpt.data inspect data=sft_demo
"""
from __future__ import annotations

import random
from typing import Optional, Tuple

from medgpt.data.loading import Records, expand_files, load_split
from medgpt.errors import UserError


def load_data(data_cfg, stage_cfg, seed: int = 0) -> Tuple[Records, Optional[Records]]:
    """Train and eval records for a stage (eval: data.eval_files, else a seeded data.eval_split share, else None)."""
    if not data_cfg.train_files and not data_cfg.hub_name:
        raise UserError("no training data: set data.train_files=[...] (files, folders or globs) or data.hub_name")
    common = dict(accepted=list(stage_cfg.formats), data_format=data_cfg.format, columns=dict(data_cfg.columns),
                  on_bad_record=data_cfg.on_bad_record, system_prompt=data_cfg.system_prompt,
                  stage=f"stage={stage_cfg.name}")
    hub = (data_cfg.hub_name, data_cfg.hub_subset, data_cfg.hub_split) if data_cfg.hub_name else None
    files = [] if hub else expand_files(data_cfg.train_files)
    train = load_split(files, hub=hub, max_samples=data_cfg.max_samples, **common)
    evaluation = None
    if data_cfg.eval_files:
        evaluation = load_split(expand_files(data_cfg.eval_files, "data.eval_files"), **common)
    elif data_cfg.eval_split:
        if not 0 < data_cfg.eval_split < 1:
            raise UserError(f"data.eval_split={data_cfg.eval_split}: give a fraction between 0 and 1")
        n_eval = max(1, int(len(train.rows) * data_cfg.eval_split))
        if n_eval >= len(train.rows):
            raise UserError(f"data.eval_split={data_cfg.eval_split} leaves no training record "
                            f"({len(train.rows)} records)")
        order = list(range(len(train.rows)))
        random.Random(seed).shuffle(order)
        held = set(order[:n_eval])
        evaluation = Records(rows=[r for i, r in enumerate(train.rows) if i in held], formats=train.formats)
        train.rows = [r for i, r in enumerate(train.rows) if i not in held]
    return train, evaluation
