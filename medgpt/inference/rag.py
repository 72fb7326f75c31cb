"""Answer questions over your documents (.txt/.md/.pdf/.jsonl): chunk with overlap, BM25 retrieval, cited sources.

    medgpt rag outputs/runs/sft-tiny-cpu/<stamp> --docs ../shared/data/medicalgpt-samples/medical_corpus.txt \
        --question "膺窗穴在哪里？"                 # leave --question out for an interactive loop
    medgpt rag <run> --docs notes/ --retrieve-only --question "..."   # show the chunks, no model

Chinese has no spaces, so BM25 indexes CJK text as overlapping character bigrams; Latin text as lowercase words.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

from medgpt.errors import DataError, UserError, command
from medgpt.inference.chat import add_model_args, generation_overrides, load
from medgpt.modeling.generate import reply

SUFFIXES = (".txt", ".md", ".pdf", ".jsonl")
SYSTEM = ("You are a careful medical assistant. Answer from the numbered sources below and cite them like [1]. "
          "If the sources do not contain the answer, say so.")


@dataclass(frozen=True)
class Chunk:
    source: str  # file, file:line (a JSON record) or file#page
    text: str


def find_files(paths: Sequence[str]) -> List[Path]:
    files: List[Path] = []
    for given in paths:
        p = Path(given).expanduser()
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not inside:
                raise UserError(f"--docs {given}: the folder holds no {'/'.join(SUFFIXES)} file")
            files += inside
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise UserError(f"--docs {given}: use {', '.join(SUFFIXES)} files (or a folder of them)")
            files.append(p)
        else:
            raise UserError(f"--docs {given}: no such file or folder")
    return files


def _record_text(record) -> str:
    """A JSON record as readable text: 'key: value' for each string field (问/答, question/answer, text...)."""
    if isinstance(record, dict):
        return "\n".join(f"{k}: {v}" for k, v in record.items() if isinstance(v, str) and v.strip())
    return record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)


def _json_lines(lines: List[str]):
    try:
        return [json.loads(line) for line in lines]
    except json.JSONDecodeError:
        return None


def read_documents(path: Path) -> Iterator[Tuple[str, str]]:
    """(source, text) pieces of one file: a record per JSON line, a page per PDF page, else the whole file."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        from pypdf import PdfReader

        for n, page in enumerate(PdfReader(str(path)).pages, 1):
            yield f"{path.name}#page{n}", page.extract_text() or ""
        return
    text = path.read_text(encoding="utf-8")
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    records = _json_lines([line for _, line in numbered]) if suffix in (".jsonl", ".txt") and numbered else None
    if suffix == ".jsonl" and records is None:
        bad = next(n for n, line in numbered if _json_lines([line]) is None)
        raise DataError(path, bad, "invalid JSON", "write one JSON object a line (or rename the file to .txt)")
    if records is not None:  # JSON lines (also a .txt of them, like medical_corpus.txt): one record each
        for (n, _), record in zip(numbered, records):
            yield f"{path.name}:{n}", _record_text(record)
    else:
        yield path.name, text


def split_text(text: str, size: int, overlap: int) -> List[str]:
    """Windows of at most `size` characters, each starting `overlap` characters before the previous one ended;
    a window ends at a line or sentence break when one lies in its last third."""
    text = text.strip()
    chunks, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            breaks = [m.end() for m in re.finditer(r"\n|[。！？.!?；;](\s|$)?", text[start + size * 2 // 3:end])]
            if breaks:
                end = start + size * 2 // 3 + breaks[-1]
        chunks.append(text[start:end].strip())
        if end >= len(text):
            break
        start = max(end - overlap, start + 1)
    return [c for c in chunks if c]


def load_chunks(paths: Sequence[str], size: int = 400, overlap: int = 80) -> List[Chunk]:
    if overlap >= size:
        raise UserError(f"--overlap {overlap} must be smaller than --chunk-size {size}")
    chunks = []
    for path in find_files(paths):
        for source, text in read_documents(path):
            pieces = split_text(text, size, overlap)
            chunks += [Chunk(source if len(pieces) == 1 else f"{source} part {i + 1}", piece)
                       for i, piece in enumerate(pieces)]
    if not chunks:
        raise UserError(f"--docs {' '.join(paths)}: no text found")
    return chunks


CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"


def tokens(text: str) -> List[str]:
    """Lowercase Latin words and digits; CJK runs as character bigrams (a lone character as itself)."""
    out = []
    for run in re.findall(rf"[{CJK}]+|[^\W_{CJK}]+", text.lower()):
        if re.match(rf"[{CJK}]", run):
            out += [run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)]
        else:
            out.append(run)
    return out


def build_index(chunks: List[Chunk]):
    import bm25s

    index = bm25s.BM25()
    index.index([tokens(c.text) for c in chunks], show_progress=False)
    return index


def retrieve(index, chunks: List[Chunk], question: str, k: int = 3) -> List[Tuple[Chunk, float]]:
    """The k best chunks with their BM25 scores (chunks sharing no term with the question are left out)."""
    found, scores = index.retrieve([tokens(question)], k=min(k, len(chunks)), show_progress=False)
    return [(chunks[i], float(s)) for i, s in zip(found[0], scores[0]) if s > 0]


def rag_messages(question: str, hits: List[Tuple[Chunk, float]], system: str = SYSTEM) -> List[dict]:
    sources = "\n\n".join(f"[{n}] ({chunk.source})\n{chunk.text}" for n, (chunk, _) in enumerate(hits, 1))
    return [{"role": "system", "content": f"{system}\n\nSources:\n{sources}"},
            {"role": "user", "content": question}]


def cited(answer: str, hits: List[Tuple[Chunk, float]]) -> List[int]:
    """Source numbers the answer cites as [n]; when it cites none, every source it was given."""
    numbers = sorted({int(n) for n in re.findall(r"\[(\d+)\]", answer) if 1 <= int(n) <= len(hits)})
    return numbers or list(range(1, len(hits) + 1))


def answer(model, tokenizer, index, chunks, question: str, k: int = 3, system: str = SYSTEM,
           **gen) -> Tuple[str, List[str]]:
    """(answer text, 'n. source' lines for the sources it used)."""

    hits = retrieve(index, chunks, question, k)
    if not hits:
        return "No document matches this question.", []
    text = reply(model, tokenizer, rag_messages(question, hits, system), **gen)
    return text, [f"[{n}] {hits[n - 1][0].source}" for n in cited(text, hits)]


@command
def main(argv=None) -> int:

    parser = argparse.ArgumentParser(prog="medgpt rag", description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--docs", nargs="+", required=True, help="files or folders (.txt .md .pdf .jsonl)")
    parser.add_argument("--question", help="one question (else: ask interactively, /exit quits)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=400, help="characters per chunk")
    parser.add_argument("--overlap", type=int, default=80, help="characters shared by neighbouring chunks")
    parser.add_argument("--retrieve-only", action="store_true", help="print the retrieved chunks; load no model")
    args = parser.parse_args(argv)
    chunks = load_chunks(args.docs, args.chunk_size, args.overlap)
    index = build_index(chunks)
    print(f"indexed {len(chunks)} chunks from {len(find_files(args.docs))} file(s)", file=sys.stderr)
    model = tokenizer = None
    if not args.retrieve_only:
        model, tokenizer, _ = load(args)
    questions = [args.question] if args.question else _ask()
    for question in questions:
        if args.retrieve_only:
            for n, (chunk, score) in enumerate(retrieve(index, chunks, question, args.top_k), 1):
                print(f"[{n}] {chunk.source}  (bm25 {score:.2f})\n{chunk.text}\n")
            continue
        text, sources = answer(model, tokenizer, index, chunks, question, args.top_k, args.system or SYSTEM,
                               **generation_overrides(args))
        print(text)
        print("Sources:\n" + "\n".join(sources) if sources else "Sources: none", flush=True)
    return 0


def _ask() -> Iterator[str]:
    while True:
        try:
            line = input("\nquestion> ").strip()
        except (EOFError, KeyboardInterrupt):
            return
        if line in ("/exit", "/quit"):
            return
        if line:
            yield line
