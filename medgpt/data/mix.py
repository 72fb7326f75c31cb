"""Mix several datasets of one stage into one training set, seeded, with the realised count of each source.

Each entry is a data config name (conf/data/<name>.yaml), a file/folder/glob, or a dict with `name` (or
`train_files`), an optional `weight` and any other data.* field for that source (max_samples, columns, ...).
No weights: the sources are concatenated. Weights on every entry: each source gets weight/sum(weights) of the
total (data.max_samples, else the sum of the sources' sizes), sampled without replacement, repeated when it
asks for more records than the source has.

    python train.py stage=sft data=mix 'data.mix=[{name: sft_demo, weight: 1}, {name: medical_sft, weight: 3}]'
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Callable, List, Tuple

from omegaconf import DictConfig, OmegaConf

from medgpt.config import DataConfig, register_configs
from medgpt.data.loading import Records
from medgpt.errors import UserError

log = logging.getLogger(__name__)
DATA_CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


def data_config(name: str) -> DictConfig:
    """conf/data/<name>.yaml checked against the DataConfig schema (same fields and types as at compose)."""

    register_configs()
    return OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(DATA_CONF / f"{name}.yaml"))


def source_config(entry) -> Tuple[DictConfig, float | None]:
    """One data.mix entry -> (its data config, its weight or None)."""

    if isinstance(entry, str):
        entry = {"name": entry}
    entry = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else dict(entry)
    weight = entry.pop("weight", None)
    name = entry.get("name")
    if not name and not entry.get("train_files") and not entry.get("hub_name"):
        raise UserError(f"data.mix entry {entry}: give a name (a conf/data config or a file) or train_files")
    if name and (DATA_CONF / f"{name}.yaml").exists():
        base = data_config(name)
    else:  # a file, folder or glob
        base = OmegaConf.structured(DataConfig(name=name or "source", train_files=[] if entry.get(
            "train_files") or entry.get("hub_name") else [name]))
    try:
        cfg = OmegaConf.merge(base, entry)
    except Exception as e:  # a misspelt field in the entry
        raise UserError(f"data.mix entry {entry}: {e}") from None
    if cfg.mix:
        raise UserError(f"data.mix entry '{cfg.name}' is itself a mix; list its sources directly")
    if weight is not None and (not isinstance(weight, (int, float)) or weight <= 0):
        raise UserError(f"data.mix entry '{cfg.name}': weight={weight!r}, give a positive number")
    return cfg, weight


def mix_records(data_cfg, load_one: Callable[[DictConfig], Records], seed: int) -> Records:
    """Load every source with `load_one` and combine them as data.mix says."""
    if data_cfg.train_files or data_cfg.hub_name:
        log.warning("data.mix is set: data.train_files/hub_name of data=%s are not used; list them in data.mix",
                    data_cfg.name)
    sources = [source_config(entry) for entry in data_cfg.mix]
    weights = [w for _, w in sources]
    if any(w is None for w in weights) and any(w is not None for w in weights):
        raise UserError("data.mix: give a weight to every entry (weighted sampling) or to none (concatenation)")
    loaded = [(cfg.name, load_one(cfg)) for cfg, _ in sources]
    names = [name for name, _ in loaded]
    if len(set(names)) != len(names):
        raise UserError(f"data.mix names a source twice: {names}; give each entry its own name")
    out = Records(rows=[])
    rng = random.Random(seed)
    if weights[0] is None:
        picked = [records.rows for _, records in loaded]
    else:
        total = data_cfg.max_samples or sum(len(records.rows) for _, records in loaded)
        targets = quotas(weights, total)
        picked = [sample(records.rows, n, rng) for (_, records), n in zip(loaded, targets)]
    for (name, records), rows in zip(loaded, picked):
        out.rows += rows
        out.sources[name] = len(rows)
        if len(records.formats) == 1:  # the records taken, by format
            out.formats[next(iter(records.formats))] += len(rows)
        else:  # several formats in one source: the records read
            out.formats.update(records.formats)
        out.skipped.update(records.skipped)
        out.first_skipped += records.first_skipped
        out.cleaned.update(records.cleaned)
        out.first_cleaned += records.first_cleaned
    if weights[0] is not None:
        rng.shuffle(out.rows)
    log.info("data.mix: %s records per source (%s)", dict(out.sources),
             "concatenated" if weights[0] is None else f"weights {weights}")
    return out


def quotas(weights: List[float], total: int) -> List[int]:
    """Split `total` by weight; largest remainders get the leftover records, so the quotas sum to `total`."""
    share = [w / sum(weights) * total for w in weights]
    counts = [int(s) for s in share]
    for i in sorted(range(len(share)), key=lambda i: share[i] - counts[i], reverse=True)[:total - sum(counts)]:
        counts[i] += 1
    return counts


def sample(rows: list, n: int, rng: random.Random) -> list:
    """n rows: whole copies of `rows` while n exceeds it, then a seeded sample without replacement."""
    repeats, rest = divmod(n, len(rows))
    return rows * repeats + rng.sample(rows, rest)
