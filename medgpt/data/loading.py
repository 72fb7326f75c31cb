"""Read data files (or a hub dataset), detect their format, convert and validate every record.

Runs before any model is loaded, so a bad record fails in seconds with its file, line and fix:

    medgpt data inspect data=sft_demo        # counts, lengths and two rendered examples
"""
from __future__ import annotations

import glob
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from medgpt.data.formats import FORMATS, RecordError, convert, detect
from medgpt.config import sample_file
from medgpt.errors import DataError, UserError

log = logging.getLogger(__name__)
SUFFIXES = {".jsonl", ".json", ".txt", ".parquet"}


def expand_files(patterns: Sequence[str], what: str = "data.train_files") -> List[Path]:
    """Files, folders (every data file inside, sorted) and globs -> existing, non-empty files."""
    files: List[Path] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"{what}: the glob '{pattern}' matches no file. Check the path "
                            f"(relative paths are relative to {os.getcwd()})")
        for match in map(Path, matches):
            if match.is_dir():
                inside = sorted(p for p in match.rglob("*") if p.suffix in SUFFIXES and p.is_file())
                if not inside:
                    raise UserError(f"{what}: the folder '{match}' holds no {'/'.join(sorted(SUFFIXES))} file")
                files += inside
            elif match.is_file():
                if match.suffix not in SUFFIXES:
                    raise UserError(f"{what}: '{match}' is not a data file; use one of {sorted(SUFFIXES)}")
                files.append(match)
            else:
                hint = (" MedicalGPT's sample data is not there: run scripts/fetch_samples.sh (or set MEDGPT_SAMPLES)"
                        if match.parent == Path(sample_file("")) else "")
                raise UserError(f"{what}: no such file '{match}' (relative paths are relative to {os.getcwd()}).{hint}")
    for path in files:
        if path.stat().st_size == 0:
            raise DataError(path, None, "the file is empty", "remove it from the list or give it records")
    return files


def read_records(path: Path) -> Iterator[Tuple[int, object]]:
    """(line or record number, raw record). Invalid JSON yields a RecordError in place of the record."""
    if path.suffix == ".txt":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():  # blank lines separate passages; they are not records
                    yield n, {"text": line.rstrip("\n")}
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    yield n, RecordError(f"invalid JSON ({e.msg} at column {e.colno})",
                                         "make each line one complete JSON object")
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, f"invalid JSON ({e.msg})", "fix the JSON, or write one record a line "
                                                                        "as .jsonl") from None
        if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}: the single list inside
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else [data]
        for n, record in enumerate(data, 1):
            yield n, record
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = (r for batch in pq.ParquetFile(path).iter_batches(batch_size=1024) for r in batch.to_pylist())
        for n, record in enumerate(records, 1):  # batch by batch: large files stream (data.streaming)
            yield n, record


@dataclass
class Records:
    """Normalised records of one split, with what was detected and skipped on the way."""
    rows: List[dict]
    formats: Counter = field(default_factory=Counter)  # format name -> records
    skipped: Counter = field(default_factory=Counter)  # reason -> records
    first_skipped: List[str] = field(default_factory=list)  # "file:line: problem", a few examples
    sources: Counter = field(default_factory=Counter)  # mixed data: source name -> records taken (data.mix)


def _iter_source(files: List[Path], hub: Optional[Tuple[str, Optional[str], str, Any]], streaming: bool = False):
    if hub:
        from datasets import load_dataset

        name, subset, split, data_files = hub
        some_files = {"data_files": data_files} if data_files else {}
        try:
            dataset = load_dataset(name, subset, split=split, streaming=streaming, **some_files)
        except Exception as e:  # hub unreachable, unknown name, ...: say which and what to do
            raise UserError(f"data.hub_name={name}: cannot load it ({type(e).__name__}: {e}). Check the name and "
                            f"your network, or download it and pass data.train_files=[<folder>]") from None
        for n, record in enumerate(dataset, 1):
            yield f"hub:{name}", n, record
        return
    for path in files:
        for n, record in read_records(path):
            yield path, n, record


def load_split(files: List[Path], *, accepted: List[str], data_format: Optional[str] = None,
               columns: Optional[dict] = None, on_bad_record: str = "error", max_samples: Optional[int] = None,
               system_prompt: Optional[str] = None, hub=None, stage: str = "this stage") -> Records:
    out = Records(rows=[])
    out.rows = list(iter_rows(files, out, accepted=accepted, data_format=data_format, columns=columns,
                              on_bad_record=on_bad_record, max_samples=max_samples, system_prompt=system_prompt,
                              hub=hub, stage=stage))
    if not out.rows:
        where = hub[0] if hub else ", ".join(map(str, files))
        raise UserError(f"no usable record in {where}" + (f" ({sum(out.skipped.values())} skipped: "
                                                           f"{dict(out.skipped)})" if out.skipped else ""))
    if out.skipped:
        log.warning("skipped %d bad record(s): %s; first: %s", sum(out.skipped.values()), dict(out.skipped),
                    "; ".join(out.first_skipped))
    return out


def iter_rows(files: List[Path], out: Records, *, accepted: List[str], data_format: Optional[str] = None,
              columns: Optional[dict] = None, on_bad_record: str = "error", max_samples: Optional[int] = None,
              system_prompt: Optional[str] = None, hub=None, stage: str = "this stage",
              streaming: bool = False) -> Iterator[dict]:
    """Normalised records one at a time (nothing held in memory); formats and skips are counted into `out`."""
    if on_bad_record not in ("error", "skip"):
        raise UserError(f"data.on_bad_record={on_bad_record}: use error or skip")
    if data_format is not None and data_format not in FORMATS:
        raise UserError(f"data.format={data_format} is not a known format; use one of {sorted(FORMATS)}")
    detected = {}  # source -> format, detected on its first good-looking record
    taken = 0
    for source, line, record in _iter_source(files, hub, streaming):
        if max_samples is not None and taken >= max_samples:
            break
        try:
            if isinstance(record, RecordError):
                raise record
            if not isinstance(record, dict):
                raise RecordError(f"the record is a {type(record).__name__}, not an object",
                                  "write each record as a JSON object")
            if columns:
                record = {columns.get(k, k): v for k, v in record.items()}
            if source not in detected:
                name = data_format or detect(record, accepted)
                if name not in accepted:
                    raise UserError(
                        f"{source}: the data is in format '{name}' ({FORMATS[name].kind}), which {stage} does "
                        f"not accept. It accepts: {', '.join(accepted)}. Give data of one of those shapes "
                        f"(e.g. {FORMATS[accepted[0]].example}) or choose another stage")
                detected[source] = name
            row = convert(detected[source], record)
            if system_prompt and "messages" in row and row["messages"][0]["role"] != "system":
                row["messages"] = [{"role": "system", "content": system_prompt}] + row["messages"]
        except RecordError as e:
            if on_bad_record == "error":
                raise DataError(source, line, e.problem,
                                f"{e.fix} (or set data.on_bad_record=skip to skip such records)") from None
            out.skipped[e.problem.split(" (")[0]] += 1
            if len(out.first_skipped) < 5:
                out.first_skipped.append(f"{source}:{line}: {e.problem}")
            continue
        taken += 1
        out.formats[detected[source]] += 1
        yield row
