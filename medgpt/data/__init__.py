"""Data: read files or a hub dataset -> detect format -> convert and validate -> split. No model needed.

    medgpt data inspect data=sft_demo
"""
from __future__ import annotations

import random
from typing import Optional, Tuple

from omegaconf import OmegaConf

from medgpt.data.loading import MAX_RECORD_MB, Records, expand_files, load_split
from medgpt.data.mix import mix_records
from medgpt.errors import UserError


def check_stage(data_cfg, stage_name: str) -> None:
    """A data config that declares its stages (data.stages) refuses the others, before anything is read."""
    if data_cfg.stages and stage_name not in data_cfg.stages:
        raise UserError(f"data={data_cfg.name} serves stage(s) {', '.join(data_cfg.stages)}, not stage={stage_name}. "
                        f"Choose a data config made for {stage_name} (the `stages:` line of conf/data/*.yaml), or "
                        f"set data.stages=[] to use this data anyway")


def source_options(data_cfg, stage_cfg) -> dict:
    """Reader options of one data config: load_split / iter_rows keyword arguments."""
    data_files = data_cfg.hub_data_files
    if OmegaConf.is_config(data_files):
        data_files = OmegaConf.to_container(data_files)
    hub = (data_cfg.hub_name, data_cfg.hub_subset, data_cfg.hub_split, data_files) if data_cfg.hub_name else None
    return dict(accepted=list(stage_cfg.formats), data_format=data_cfg.format, columns=dict(data_cfg.columns),
                on_bad_record=data_cfg.on_bad_record, system_prompt=data_cfg.system_prompt,
                stage=f"stage={stage_cfg.name}", hub=hub, max_samples=data_cfg.max_samples,
                max_record_mb=data_cfg.get("max_record_mb") or MAX_RECORD_MB)


def load_train(data_cfg, stage_cfg, seed: int = 0) -> Records:
    check_stage(data_cfg, stage_cfg.name)
    if data_cfg.mix:
        return mix_records(data_cfg, lambda source: load_train(source, stage_cfg, seed), seed)
    if not data_cfg.train_files and not data_cfg.hub_name:
        raise UserError("no training data: set data.train_files=[...] (files, folders or globs), data.hub_name "
                        "or data.mix")
    files = [] if data_cfg.hub_name else expand_files(data_cfg.train_files)
    return load_split(files, **source_options(data_cfg, stage_cfg))


def load_data(data_cfg, stage_cfg, seed: int = 0) -> Tuple[Records, Optional[Records]]:
    """Train and eval records for a stage (eval: data.eval_files, else a seeded data.eval_split share, else None)."""
    common = {k: v for k, v in source_options(data_cfg, stage_cfg).items() if k not in ("hub", "max_samples")}
    train = load_train(data_cfg, stage_cfg, seed)
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
