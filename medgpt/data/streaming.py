"""Streaming data for corpora larger than memory: records are read, tokenized and packed on the fly
(a datasets.IterableDataset), so memory stays flat however large the files or hub dataset are.

pt: texts are concatenated (each followed by EOS) and cut into data.block_size blocks as they stream by.
sft: each conversation is tokenized as it comes (assistant-only labels); stage.args.packing=true packs on the fly.
A stream has no length, so the trainer needs stage.args.max_steps.

    python train.py stage=pt data=linly-ai_chinese-pretraining-dataset data.streaming=true stage.args.max_steps=10000
"""
from __future__ import annotations

import logging
from typing import Iterable, Iterator, List

from medgpt.config import RunSettings
from medgpt.data import check_stage, source_options
from medgpt.data.cache import cached_prepare
from medgpt.data.loading import Records, expand_files, iter_rows, load_split
from medgpt.data.tokenize import template_kwargs, tokenize_chats
from medgpt.errors import UserError

log = logging.getLogger(__name__)
STREAMING_STAGES = ("pt", "sft")
SHUFFLE_BUFFER = 1000  # samples held for a seeded local shuffle of the stream


def check_streaming(cfg) -> None:
    """Everything a streaming run needs, checked before any data is read or model loaded."""
    if cfg.stage.name not in STREAMING_STAGES:
        raise UserError(f"data.streaming=true works with stage=pt and stage=sft, not stage={cfg.stage.name}; "
                        f"set data.streaming=false")
    max_steps = cfg.stage.args.get("max_steps")
    if not max_steps or max_steps <= 0:
        raise UserError("data.streaming=true needs stage.args.max_steps=<N>: a stream has no length, so the number "
                        "of training steps cannot come from epochs. Add e.g. stage.args.max_steps=1000")
    if cfg.data.mix:
        raise UserError("data.streaming=true does not combine with data.mix; stream one source, or mix in memory")
    if cfg.data.eval_split:
        raise UserError("data.streaming=true cannot hold out data.eval_split from a stream; give data.eval_files "
                        "(read in memory) or set data.eval_split=0")


def stream_rows(cfg, counts: Records) -> Iterator[dict]:
    """Normalised records of data.train_files / data.hub_name, one at a time (formats and skips into counts)."""
    if not cfg.data.train_files and not cfg.data.hub_name:
        raise UserError("no training data: set data.train_files=[...] or data.hub_name")
    files = [] if cfg.data.hub_name else expand_files(cfg.data.train_files)
    yield from iter_rows(files, counts, streaming=True, **source_options(cfg.data, cfg.stage))


def pack_blocks(texts: Iterable[str], tokenizer, block_size: int) -> Iterator[List[int]]:
    """Token blocks of exactly block_size from a stream of texts (EOS after each); the last partial block is
    dropped, unless the whole stream is shorter than one block."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    buffer: List[int] = []
    emitted = False
    for text in texts:
        buffer += tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        while len(buffer) >= block_size:
            yield buffer[:block_size]
            buffer = buffer[block_size:]
            emitted = True
    if buffer and not emitted:
        yield buffer


def generate_samples(cfg, tokenizer, settings: RunSettings) -> Iterator[dict]:
    """{input_ids, labels} samples of the stage, produced lazily from the stream (sft: settings.max_length)."""
    counts = Records(rows=[])
    rows = stream_rows(cfg, counts)
    if cfg.stage.name == "pt":
        for block in pack_blocks((row["text"] for row in rows), tokenizer, cfg.data.block_size):
            yield {"input_ids": block, "labels": list(block)}
    else:
        for row in rows:
            columns, _ = tokenize_chats([row], tokenizer, settings.max_length, cfg.data.overlong,
                                        settings.source("max_length"), template_kwargs(settings))
            for ids, labels in zip(columns["input_ids"], columns["labels"]):
                yield {"input_ids": ids, "labels": labels}
    if counts.skipped:
        log.warning("stream: skipped %d bad record(s): %s", sum(counts.skipped.values()), dict(counts.skipped))
    if counts.cleaned:
        log.warning("stream: %s", dict(counts.cleaned))


def streaming_dataset(cfg, tokenizer, settings: RunSettings):
    """The training IterableDataset: read, tokenize and pack lazily, shuffled in a buffer seeded by data_seed."""
    from datasets import Features, IterableDataset, Sequence, Value

    check_streaming(cfg)
    check_stage(cfg.data, cfg.stage.name)
    next(stream_rows(cfg, Records(rows=[])), None)  # missing files, a wrong format: fail now, not mid-training
    features = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int64"))})
    dataset = IterableDataset.from_generator(generate_samples, features=features,
                                             gen_kwargs={"cfg": cfg, "tokenizer": tokenizer, "settings": settings})
    return dataset.shuffle(seed=settings.data_seed, buffer_size=SHUFFLE_BUFFER)


def streaming_datasets(cfg, stage, tokenizer, settings: RunSettings):
    """(train IterableDataset, eval Dataset or None, report) for medgpt.training.run: eval files are small, so they are
    read in memory and tokenized through the cache like any other run."""

    train = streaming_dataset(cfg, tokenizer, settings)
    report = {"streaming": True, "train_records": None}
    evaluation = None
    if cfg.data.eval_files:
        options = {k: v for k, v in source_options(cfg.data, cfg.stage).items() if k not in ("hub", "max_samples")}
        records = load_split(expand_files(cfg.data.eval_files, "data.eval_files"), **options)
        evaluation = cached_prepare(stage, records.rows, tokenizer, cfg, settings)[0]
        report["eval_records"] = len(records.rows)
    return train, evaluation, report
