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

from medgpt.data.formats import FORMATS, RecordError, Unanswered, answered, convert, detect
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


MAX_RECORD_MB = 16.0  # data.max_record_mb's default: a longer line is refused without being read into memory
BOMS = {b"\xff\xfe\x00\x00": "UTF-32-LE", b"\x00\x00\xfe\xff": "UTF-32-BE", b"\xff\xfe": "UTF-16-LE",
        b"\xfe\xff": "UTF-16-BE"}


def check_encoding(path: Path) -> None:
    """UTF-8 only: a UTF-16/32 file (a byte-order mark, or NUL bytes in its first 4 KB) is refused naming its
    encoding and the command that converts it."""
    with open(path, "rb") as f:
        head = f.read(4096)
    encoding = next((name for bom, name in BOMS.items() if head.startswith(bom)), None)
    if encoding is None and b"\x00" in head:
        odd_zeros = head[1::2].count(0) > head[0::2].count(0)
        encoding = "UTF-16-LE" if odd_zeros else "UTF-16-BE"
        encoding += " (no byte-order mark)"
    if encoding:
        raise DataError(path, None, f"the file is {encoding}-encoded; data files must be UTF-8",
                        f"convert it: iconv -f {encoding.split()[0]} -t UTF-8 '{path}' > "
                        f"'{path.stem}.utf8{path.suffix}'")


def _not_utf8(path: Path, line: int, error: UnicodeDecodeError) -> DataError:
    byte = error.object[error.start:error.start + 1].hex()
    return DataError(path, line, f"the file is not UTF-8 (byte 0x{byte} at column {error.start + 1}); it looks like "
                                 f"Latin-1 / Windows-1252", f"convert it: iconv -f LATIN1 -t UTF-8 '{path}' > "
                                                             f"'{path.stem}.utf8{path.suffix}'")


def read_lines(path: Path, max_bytes: int) -> Iterator[Tuple[int, object]]:
    """(line number, text) of the non-blank lines, decoded as UTF-8 (Latin-1 and the like refused with the line).
    A line longer than max_bytes is never held in memory: it yields a RecordError instead (skipped in chunks)."""
    check_encoding(path)
    with open(path, "rb") as f:
        for n, raw in enumerate(iter(lambda: f.readline(max_bytes + 1), b""), 1):
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                size = len(raw)
                while raw and not raw.endswith(b"\n"):
                    raw = f.readline(1 << 20)
                    size += len(raw)
                yield n, RecordError(f"the record is {size / 2 ** 20:.1f} MB, more than data.max_record_mb="
                                     f"{max_bytes / 2 ** 20:g}", "split or shorten it, or raise data.max_record_mb")
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, n, e) from None
            if n == 1:
                line = line.lstrip("\ufeff")  # a UTF-8 byte-order mark
            if line.strip():
                yield n, line


class DuplicateKeys:
    """json.loads' object_pairs_hook: builds the dict (the last value of a repeated key wins, as json.loads does) and
    remembers the repeated keys, so the reader can warn naming the line."""

    def __init__(self):
        self.repeated: List[str] = []

    def __call__(self, pairs):
        out = dict(pairs)
        if len(out) != len(pairs):
            seen = set()
            self.repeated += [k for k, _ in pairs if k in seen or seen.add(k)]
        return out


def _warn_duplicates(path, line, hook: DuplicateKeys, warned: List[int]) -> None:
    if hook.repeated:
        warned[0] += 1
        if warned[0] <= 5:
            log.warning("%s:%s: duplicate key(s) %s in the record: the last value of each is used", path, line,
                        ", ".join(repr(k) for k in dict.fromkeys(hook.repeated)))
        hook.repeated.clear()


def read_records(path: Path, max_record_mb: float = MAX_RECORD_MB) -> Iterator[Tuple[int, object]]:
    """(line or record number, raw record). Invalid JSON (or an oversized line) yields a RecordError in place of the
    record; a file that is not UTF-8 or a .json whose top level is not a list/object raises a DataError."""
    max_bytes = int(max_record_mb * 2 ** 20)
    hook, warned = DuplicateKeys(), [0]
    if path.suffix == ".txt":
        for n, line in read_lines(path, max_bytes):  # blank lines separate passages; they are not records
            yield n, line if isinstance(line, RecordError) else {"text": line.rstrip("\r\n")}
    elif path.suffix == ".jsonl":
        for n, line in read_lines(path, max_bytes):
            if isinstance(line, RecordError):
                yield n, line
                continue
            try:
                record = json.loads(line, object_pairs_hook=hook)
            except json.JSONDecodeError as e:
                yield n, RecordError(f"invalid JSON ({e.msg} at column {e.colno})",
                                     "make each line one complete JSON object")
                continue
            _warn_duplicates(path, n, hook, warned)
            yield n, record
    elif path.suffix == ".json":
        check_encoding(path)
        raw = path.read_bytes()
        try:
            data = json.loads(raw.decode("utf-8").lstrip("\ufeff"), object_pairs_hook=hook)
        except UnicodeDecodeError as e:
            raise _not_utf8(path, raw.count(b"\n", 0, e.start) + 1, e) from None
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, f"invalid JSON ({e.msg})", "fix the JSON, or write one record a line "
                                                                        "as .jsonl") from None
        if hook.repeated:
            log.warning("%s: duplicate key(s) %s in its records: the last value of each is used", path,
                        ", ".join(repr(k) for k in dict.fromkeys(hook.repeated)))
        if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}: the single list inside
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else [data]
        if not isinstance(data, list):
            raise DataError(path, None, f"the top level of the JSON file is a {type(data).__name__}, not a list of "
                                        f"records or an object", 'write [{"...": ...}, ...] (a list of records), '
                                                                 'or one record a line as .jsonl')
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
    # real-world chats, never fatal: trimmed_trailing_turns (records whose unanswered last turns were cut),
    # dropped_no_answer (records without any answer)
    cleaned: Counter = field(default_factory=Counter)
    first_cleaned: List[str] = field(default_factory=list)  # "file:line: what", a few examples

    def counts(self) -> dict:
        """What reading left out or changed, for the log, metrics.json and `medgpt data inspect`."""
        return {**({"skipped_records": dict(self.skipped)} if self.skipped else {}), **dict(self.cleaned)}


def _iter_source(files: List[Path], hub: Optional[Tuple[str, Optional[str], str, Any]], streaming: bool = False,
                 max_record_mb: float = MAX_RECORD_MB):
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
        for n, record in read_records(path, max_record_mb):
            yield path, n, record


def load_split(files: List[Path], *, accepted: List[str], data_format: Optional[str] = None,
               columns: Optional[dict] = None, on_bad_record: str = "error", max_samples: Optional[int] = None,
               system_prompt: Optional[str] = None, hub=None, stage: str = "this stage",
               max_record_mb: float = MAX_RECORD_MB) -> Records:
    out = Records(rows=[])
    out.rows = list(iter_rows(files, out, accepted=accepted, data_format=data_format, columns=columns,
                              on_bad_record=on_bad_record, max_samples=max_samples, system_prompt=system_prompt,
                              hub=hub, stage=stage, max_record_mb=max_record_mb))
    if not out.rows:
        where = hub[0] if hub else ", ".join(map(str, files))
        left_out = {**out.skipped, **out.cleaned}
        raise UserError(f"no usable record in {where}" + (f" ({sum(left_out.values())} left out: {left_out}; e.g. "
                                                           f"{'; '.join(out.first_skipped + out.first_cleaned)})"
                                                           if left_out else ""))
    if out.skipped:
        log.warning("skipped %d bad record(s): %s; first: %s", sum(out.skipped.values()), dict(out.skipped),
                    "; ".join(out.first_skipped))
    report_cleaned(out)
    return out


def report_cleaned(out: Records) -> None:
    if out.cleaned:
        log.warning("data: %s (trailing user turns without an answer are cut; records without any answer are "
                    "dropped); e.g. %s", ", ".join(f"{k}={v}" for k, v in out.cleaned.items()),
                    "; ".join(out.first_cleaned))


def iter_rows(files: List[Path], out: Records, *, accepted: List[str], data_format: Optional[str] = None,
              columns: Optional[dict] = None, on_bad_record: str = "error", max_samples: Optional[int] = None,
              system_prompt: Optional[str] = None, hub=None, stage: str = "this stage",
              streaming: bool = False, max_record_mb: float = MAX_RECORD_MB) -> Iterator[dict]:
    """Normalised records one at a time (nothing held in memory); formats and skips are counted into `out`."""
    if on_bad_record not in ("error", "skip"):
        raise UserError(f"data.on_bad_record={on_bad_record}: use error or skip")
    if data_format is not None and data_format not in FORMATS:
        raise UserError(f"data.format={data_format} is not a known format; use one of {sorted(FORMATS)}")
    detected = {}  # source -> format, detected on its first good-looking record
    taken = 0
    for source, line, record in _iter_source(files, hub, streaming, max_record_mb):
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
            if "messages" in row:
                row["messages"], trimmed = answered(row["messages"])
                if trimmed:
                    _note(out, "trimmed_trailing_turns", f"{source}:{line}: {trimmed} trailing turn(s) cut")
            if system_prompt and "messages" in row and row["messages"][0]["role"] != "system":
                row["messages"] = [{"role": "system", "content": system_prompt}] + row["messages"]
        except Unanswered:
            _note(out, "dropped_no_answer", f"{source}:{line}: no answer, dropped")
            continue
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


def _note(out: Records, what: str, example: str) -> None:
    out.cleaned[what] += 1
    if len(out.first_cleaned) < 3:
        out.first_cleaned.append(example)
