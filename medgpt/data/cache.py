"""Tokenize once: a stage's prepared (tokenized) dataset is saved as Arrow under a cache folder, keyed by what it
depends on, and reused by later runs and by every process of a multi-process launch.

Key = data content (the normalised records) + tokenizer (its vocabulary, merges, special tokens) + chat template
+ stage (name, module, the code of the stage module and of medgpt.data.tokenize) + lengths (the run's max_length,
overlong, block_size, stage.args fields named *length*) + data.num_proc. Anything else (learning rate, epochs, ...)
leaves the cache valid.
The first process to take the folder's lock prepares and saves; the others wait on the lock, then load it.

    MEDGPT_DATA_CACHE=/fast/disk python train.py data.num_proc=8      # cache folder (~/.cache/medgpt/datasets)
    python train.py data.cache=false                                  # always tokenize afresh
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import List, Tuple

from omegaconf import OmegaConf

from medgpt.config import RunSettings
from medgpt.data import tokenize
from medgpt.errors import UserError

log = logging.getLogger(__name__)
CACHE_ENV = "MEDGPT_DATA_CACHE"
DONE = "counts.json"  # written last: its presence marks a complete entry


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "medgpt" / "datasets").expanduser()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides token ids: the tokenizer's serialized model (or vocabulary) and special tokens."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([str(tokenizer.special_tokens_map), tokenizer.pad_token_id, tokenizer.eos_token_id,
                         tokenizer.bos_token_id, type(tokenizer).__name__]).encode())
    return h.hexdigest()


def rows_fingerprint(rows: List[dict]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def cache_key(stage, rows: List[dict], tokenizer, cfg, settings: RunSettings) -> str:

    args = OmegaConf.to_container(cfg.stage.args, resolve=True)
    stage_fields = {k: v for k, v in OmegaConf.to_container(cfg.stage, resolve=True).items() if k != "args"}
    options = {
        "stage": stage_fields,  # name, module, formats, reward functions/model (checked in prepare)
        "code": [inspect.getsource(stage), inspect.getsource(tokenize)],
        "template": tokenizer.chat_template,
        "max_length": settings.max_length, "overlong": cfg.data.overlong,
        "block_size": cfg.data.block_size, "args": {k: v for k, v in args.items() if "length" in k},
        "num_proc": cfg.data.num_proc or 1,  # pt packs each worker's share separately
        "chat_template_kwargs": tokenize.template_kwargs(settings),
    }
    h = hashlib.sha256()
    for part in (rows_fingerprint(rows), tokenizer_fingerprint(tokenizer),
                 json.dumps(options, sort_keys=True, default=str)):
        h.update(part.encode())
    return f"{cfg.stage.name}-{h.hexdigest()[:24]}"


def cached_prepare(stage, rows: List[dict], tokenizer, cfg, settings: RunSettings) -> Tuple[object, dict]:
    """stage.prepare(rows, tokenizer, cfg, settings), read from the cache when an entry with the same key exists.
    Returns (dataset, counts); counts gain data_cache: hit | miss | off."""
    if not cfg.data.cache or not stage.CACHEABLE:  # only stages whose prepare() just tokenizes:
        dataset, counts = prepare_parallel(stage, rows, tokenizer, cfg, settings)  # others check config every run
        return dataset, {**counts, "data_cache": "off"}
    from datasets import load_from_disk
    from filelock import FileLock

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(stage, rows, tokenizer, cfg, settings)
    entry = root / key
    with FileLock(str(root / f"{key}.lock")):  # one process prepares; the others wait here, then load
        if (entry / DONE).exists():
            counts = json.loads((entry / DONE).read_text())
            log.info("data: tokenized dataset from the cache %s", entry)
            return load_from_disk(str(entry / "dataset")), {**counts, "data_cache": "hit"}
        start = time.time()
        dataset, counts = prepare_parallel(stage, rows, tokenizer, cfg, settings)
        if not hasattr(dataset, "save_to_disk") or len(dataset) == 0:  # not a datasets.Dataset, or nothing left
            return dataset, {**counts, "data_cache": "off"}
        tmp = root / f"{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        dataset.save_to_disk(str(tmp / "dataset"))
        (tmp / DONE).write_text(json.dumps(dict(counts)))
        shutil.rmtree(entry, ignore_errors=True)  # a partial entry left by a killed run
        os.replace(tmp, entry)
        log.info("data: tokenized %d records in %.1fs, cached in %s", len(rows), time.time() - start, entry)
    # memory-mapped from the cache: the same object whichever process prepared it
    return load_from_disk(str(entry / "dataset")), {**counts, "data_cache": "miss"}


def prepare_parallel(stage, rows: List[dict], tokenizer, cfg, settings: RunSettings) -> Tuple[object, Counter]:
    """stage.prepare over data.num_proc contiguous shards in worker processes, concatenated in order.
    (pt: each shard packs its own blocks, so at most num_proc short tails are dropped instead of one.)
    The workers are forked: they inherit the records, tokenizer and config (_JOB) instead of receiving them pickled
    (a 150k-token vocabulary per shard cost more than the tokenization of a few thousand records)."""
    global _JOB
    workers = cfg.data.num_proc or 1
    if workers <= 1 or len(rows) < 2 * workers:
        return stage.prepare(rows, tokenizer, cfg, settings)
    from datasets import concatenate_datasets

    size = -(-len(rows) // workers)
    _JOB = (stage, [rows[i:i + size] for i in range(0, len(rows), size)], tokenizer, cfg, settings)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_prepare_shard, range(len(_JOB[1]))))
    finally:
        _JOB = None
    counts: Counter = Counter()
    for _, shard_counts in results:
        counts.update(shard_counts)
    return concatenate_datasets([dataset for dataset, _ in results]), counts


_JOB = None  # (stage, shards, tokenizer, cfg, settings) of the running prepare_parallel, inherited by its workers


def _prepare_shard(index: int):
    stage, shards, tokenizer, cfg, settings = _JOB
    return stage.prepare(shards[index], tokenizer, cfg, settings)


DROPPED = {"dropped_overlong": "longer than max_length", "dropped_no_loss": "no answer token left after truncation",
           "dropped_long_prompt": "the prompt alone fills max_length"}


def prepare_split(split: str, stage, rows: List[dict], tokenizer, cfg, settings: RunSettings) -> Tuple[object, dict]:
    """cached_prepare for one split. A train split with no sample left stops the run before the model loads (never a
    0-step "completed" run); an eval split that loses every sample (too long, no loss, or its own data problem) is
    dropped with a warning naming the split and the number, and the run trains without evaluation (None)."""
    try:
        dataset, counts = cached_prepare(stage, rows, tokenizer, cfg, settings)
    except UserError as e:
        if split == "train":
            raise
        log.warning("%s split: %s; training without evaluation", split, e)
        without_evaluation(cfg)
        return None, {"eval_skipped": str(e)}
    if not hasattr(dataset, "__len__") or len(dataset) > 0:
        return dataset, counts
    key = settings.source("max_length")
    reasons = ", ".join(f"{counts[k]} {why}" for k, why in DROPPED.items() if counts.get(k)) or "no loss left"
    problem = (f"{split} split: all {len(rows)} record(s) were dropped ({reasons}; {key}={settings.max_length}, "
               f"data.overlong={cfg.data.overlong})")
    fix = f"raise {key}, or shorten the records"
    if split == "train":
        raise UserError(f"{problem}: nothing to train on. Fix: {fix}")
    log.warning("%s; training without evaluation. To evaluate: %s", problem, fix)
    without_evaluation(cfg)
    return None, {**counts, "eval_skipped": problem}


def without_evaluation(cfg) -> None:
    """The trainer refuses eval_strategy=steps|epoch (and load_best_model_at_end) without eval data: once the eval
    split is gone, those stage.args are turned off for this run (with a warning), so the run still trains."""
    from omegaconf import open_dict

    args = cfg.stage.args
    changed = {k: v for k, v in (("eval_strategy", "no"), ("load_best_model_at_end", False))
               if args.get(k) not in (None, v)}
    if changed:
        log.warning("no eval data left: %s for this run", ", ".join(f"stage.args.{k}={v}" for k, v in changed.items()))
        with open_dict(args):
            for key, value in changed.items():
                args[key] = value
