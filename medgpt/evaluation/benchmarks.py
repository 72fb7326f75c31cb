"""Public benchmarks (conf/benchmark/<name>.yaml) -> validated questions, read through datasets.load_dataset.

A benchmark config names its hub dataset (`hub_name`, `hub_subsets`, `hub_split`, `hub_data_files`,
`hub_revision`), the columns of its schema (`columns: {their column: our field}`, our fields: id, question,
options, A..H, answer, context), which records to keep (`keep: {column: value}`), the split few-shot examples come
from, a fixed prompt with a version and the answer-extraction rule. Questions are normalised to
`Item(id, question, options {letter: text}, answer, subset, context)`; records that do not fit are counted by
reason; a benchmark left with none stops the run naming the reasons and the fix, before any model loads.

`eval.hub_root=<folder>` reads a local mirror of the hub instead (`<folder>/<dataset id>/...`, as
`huggingface-cli download --repo-type dataset <id> --local-dir <folder>/<id>` leaves it); `hub_name` may also be
a local folder itself (`eval.benchmarks.cmb.hub_name=<folder>`).

    python -c "from medgpt.evaluation.benchmarks import extract; print(extract('letter-v1', '答案：C', 'ABCD'))"
"""
from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from medgpt.errors import UserError

log = logging.getLogger(__name__)
LETTERS = "ABCDEFGH"
KINDS = ("mcq", "yesno")
YESNO = ("yes", "no", "maybe")
OUR_FIELDS = {"id", "question", "options", "answer", "context", *LETTERS}


@dataclass
class Item:
    id: str
    question: str
    options: Dict[str, str]  # letter -> text (yesno: empty)
    answer: str  # a letter, or yes / no / maybe
    subset: Optional[str] = None
    context: Optional[str] = None


@dataclass
class Benchmark:
    """One benchmark's config (conf/benchmark/<name>.yaml) and, once loaded, its questions and few-shot pool."""
    name: str
    spec: Dict[str, Any]
    items: List[Item] = field(default_factory=list)
    shots: List[Item] = field(default_factory=list)  # few-shot pool (same for every question, minus itself)
    skipped: Dict[str, int] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.spec["kind"]

    @property
    def choices(self) -> Optional[Sequence[str]]:
        return YESNO if self.kind == "yesno" else None

    def choices_of(self, item: Item) -> List[str]:
        """What the model may answer: the option letters, or yes / no / maybe."""
        return list(YESNO) if self.kind == "yesno" else list(item.options)


REQUIRED = ("name", "language", "kind", "hub_name", "hub_split", "columns", "prompt", "extract")


def check_spec(name: str, spec: Dict[str, Any]) -> None:
    missing = [k for k in REQUIRED if spec.get(k) in (None, "", {})]
    if missing:
        raise UserError(f"eval.benchmarks.{name}: missing {', '.join(missing)} (see conf/benchmark/*.yaml)")
    if spec["kind"] not in KINDS:
        raise UserError(f"eval.benchmarks.{name}.kind={spec['kind']}: use one of {', '.join(KINDS)}")
    if spec["extract"] not in EXTRACTORS:
        raise UserError(f"eval.benchmarks.{name}.extract={spec['extract']}: use one of {', '.join(EXTRACTORS)}")
    unknown = set(spec["columns"].values()) - OUR_FIELDS
    if unknown:
        raise UserError(f"eval.benchmarks.{name}.columns maps to {sorted(unknown)}: our fields are "
                        f"{sorted(OUR_FIELDS)} ({{their column: our field}})")
    for key in ("version", "template"):
        if not (spec["prompt"] or {}).get(key):
            raise UserError(f"eval.benchmarks.{name}.prompt.{key} is missing: every prompt is fixed and versioned")


# ---- reading: the hub (or a local mirror of it) through datasets.load_dataset ----

def _local(path: str, hub_root: Optional[str]) -> str:
    """hub_root mirror: `<id>` -> `<root>/<id>`, `hf://datasets/<id>[@rev]/<file>` -> `<root>/<id>/<file>`."""
    if not hub_root or not isinstance(path, str):
        return path
    root = Path(hub_root).expanduser()
    if path.startswith("hf://datasets/"):
        repo_and_file = path[len("hf://datasets/"):].split("/")
        repo, rest = "/".join(repo_and_file[:2]).split("@")[0], repo_and_file[2:]
        return str(root.joinpath(repo, *rest))
    return str(root / path) if (root / path).exists() else path


def _data_files(spec, hub_root):
    files = spec.get("hub_data_files")
    if not files:
        return None
    if isinstance(files, dict):
        return {split: ([_local(f, hub_root) for f in v] if isinstance(v, (list, tuple)) else _local(v, hub_root))
                for split, v in files.items()}
    return [_local(f, hub_root) for f in files] if isinstance(files, (list, tuple)) else _local(files, hub_root)


def read_split(spec: Dict[str, Any], subset: Optional[str], split: str, hub_root: Optional[str]) -> List[dict]:
    """The records of one subset/split, as load_dataset gives them."""
    from datasets import load_dataset

    name = _local(spec["hub_name"], hub_root)
    files = _data_files(spec, hub_root)
    if isinstance(files, dict):
        files = {split: files[split]} if split in files else files
    kwargs = {"data_files": files} if files else {}
    if spec.get("hub_revision") and name == spec["hub_name"]:
        kwargs["revision"] = spec["hub_revision"]
    try:
        return list(load_dataset(name, subset, split=split, **kwargs))
    except Exception as e:  # unreachable hub, unknown name/subset/split: say which and what to do
        where = f"{name}" + (f" (subset {subset})" if subset else "") + f", split {split}"
        raise UserError(f"benchmark {spec['name']}: cannot load {where} ({type(e).__name__}: {str(e)[:300]}). "
                        f"Check the network or give a local copy: eval.hub_root=<folder holding {spec['hub_name']}/> "
                        f"or eval.benchmarks.{spec['name']}.hub_name=<folder>") from None


def _get(record: dict, column: str):
    value: Any = record
    for part in column.split("."):  # nested columns: context.contexts
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


OPTION_LINE = re.compile(r"^\s*([A-H])(?:\s*[.．、:：)）]\s*|\s+)(.*)$")


def _options(row: dict) -> Dict[str, str]:
    """options as a dict {A: ..}, a list of texts, a list of {key, value}, or "A text\\nB text" lines; or A..H."""
    raw = row.get("options")
    if raw is None:
        return {k: str(row[k]) for k in LETTERS if row.get(k) is not None}
    if isinstance(raw, dict):
        return {str(k).strip().upper(): str(v) for k, v in raw.items() if v is not None}
    if isinstance(raw, str):
        found: Dict[str, str] = {}
        last = None
        for line in raw.splitlines():
            m = OPTION_LINE.match(line)
            if m and m.group(1) not in found:
                last = m.group(1)
                found[last] = m.group(2).strip()
            elif last and line.strip():  # a wrapped option continues on the next line
                found[last] += " " + line.strip()
        return found
    if isinstance(raw, (list, tuple)):
        if raw and all(isinstance(o, dict) and "key" in o for o in raw):
            return {str(o["key"]).strip().upper(): str(o.get("value", "")) for o in raw}
        return {LETTERS[i]: str(o) for i, o in enumerate(raw) if o is not None}
    return {}


def _answer(value, options: Dict[str, str], kind: str) -> Tuple[Optional[str], Optional[str]]:
    """(answer, None) or (None, why it is skipped / wrong)."""
    if kind == "yesno":
        text = str(value or "").strip().lower()
        return (text, None) if text in YESNO else (None, f"answer {value!r} is not yes / no / maybe")
    if isinstance(value, bool) or value is None:
        return None, "no answer"
    if isinstance(value, int):  # an index into the options (MMLU answer, MedMCQA cop)
        letters = list(options)
        return (letters[value], None) if 0 <= value < len(letters) else (None, f"answer index {value} out of range")
    text = str(value).strip().upper().strip("()（）. ")
    if text.isdigit() and int(text) < len(options):
        return list(options)[int(text)], None
    if len(text) > 1 and all(c in LETTERS for c in text):
        return None, "several answers (multiple-answer question)"
    if text in options:
        return text, None
    return None, f"answer {value!r} is not one of the options {sorted(options)}"


def normalise(spec: Dict[str, Any], record: dict, index: int, subset: Optional[str]) -> Tuple[Optional[Item], str]:
    """One source record -> (Item, "") or (None, reason to skip)."""
    for column, wanted in (spec.get("keep") or {}).items():
        if _get(record, column) != wanted:
            return None, f"{column} is not {wanted}"
    row = {ours: _get(record, theirs) for theirs, ours in spec["columns"].items()}
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        return None, "no question text"
    options = {} if spec["kind"] == "yesno" else _options(row)
    if spec["kind"] == "mcq" and len(options) < 2:
        return None, "fewer than two options"
    answer, why = _answer(row.get("answer"), options, spec["kind"])
    if answer is None:
        return None, why
    context = row.get("context")
    if isinstance(context, (list, tuple)):
        context = "\n".join(map(str, context))
    item_id = row.get("id")
    item_id = f"{subset + '/' if subset else ''}{item_id if item_id is not None else index}"
    return Item(str(item_id), question.strip(), options, answer, subset, context), ""


def _subsets(spec) -> List[Optional[str]]:
    return list(spec.get("hub_subsets") or [None])


def load_benchmark(name: str, spec: Dict[str, Any], *, hub_root: Optional[str], limit: Optional[int],
                   few_shot: int) -> Benchmark:
    """Read and normalise every question (and the few-shot candidates). Records that cannot be scored (filtered by
    `keep`, multiple-answer, no answer) are counted by reason (`<benchmark>/skipped` in metrics.json); none left
    stops the run with the reasons, before any model loads."""
    spec = {**spec, "name": spec.get("name") or name}
    check_spec(name, spec)
    bench = Benchmark(name, spec)
    skipped: Dict[str, int] = {}
    for subset in _subsets(spec):
        records = read_split(spec, subset, spec["hub_split"], hub_root)
        for i, record in enumerate(records):
            item, why = normalise(spec, record, i, subset)
            if item is None:
                skipped[why] = skipped.get(why, 0) + 1
                continue
            bench.items.append(item)
    if limit is not None:
        bench.items = bench.items[:limit]
    if not bench.items:
        raise UserError(f"benchmark {name}: no question to score in {spec['hub_name']} ({spec['hub_split']}); "
                        f"skipped: {skipped}. Check the columns mapping in conf/benchmark/{name}.yaml "
                        f"(their column: our field)")
    bench.skipped = skipped
    if few_shot and spec.get("fewshot_split"):
        bench.shots = _first_of_split(bench, few_shot, hub_root)
    return bench


def _first_of_split(bench: Benchmark, k: int, hub_root: Optional[str]) -> List[Item]:
    """The first k usable questions of spec.fewshot_split in each subset (lm-eval's first_n sampler)."""
    spec, split, out = bench.spec, bench.spec["fewshot_split"], []
    for subset in _subsets(spec):
        taken = 0
        for i, record in enumerate(read_split(spec, subset, split, hub_root)):
            item, _ = normalise(spec, record, i, subset)
            if item is not None and taken < k:
                item.id = f"{split}:{item.id}"
                out.append(item)
                taken += 1
    return out


def choose_shots(bench: Benchmark, k: int, seed: int) -> None:
    """The few-shot pool: the fewshot split's first k (read by load_benchmark), or, without a few-shot split,
    k+1 questions of the scored split drawn with the seed (a question never sees itself: the extra one replaces
    it). The same pool serves every question, so its ids are recorded once per benchmark."""
    if k and not bench.spec.get("fewshot_split"):
        bench.shots = random.Random(seed).sample(bench.items, min(k + 1, len(bench.items)))


def shots_for(bench: Benchmark, item: Item, k: int) -> List[Item]:
    """The few-shot examples of one question: the pool of its subset, minus the question itself."""
    pool = [s for s in bench.shots if s.subset == item.subset and s.id != item.id]
    return pool[:k]


# ---- prompts ----

def render_user(bench: Benchmark, item: Item) -> str:
    prompt = bench.spec["prompt"]
    options = "\n".join(f"{letter}. {text}" for letter, text in item.options.items())
    return prompt["template"].format(instruction=prompt.get("instruction", ""), question=item.question,
                                     options=options, context=item.context or "").strip()


def messages_for(bench: Benchmark, item: Item, k: int, system: Optional[str] = None) -> List[dict]:
    """Chat messages: the shots as earlier user/assistant turns (answer = the letter or yes/no/maybe), then the
    question; the model's own chat template renders them."""
    messages = [{"role": "system", "content": system}] if system else []
    for shot in shots_for(bench, item, k):
        messages += [{"role": "user", "content": render_user(bench, shot)},
                     {"role": "assistant", "content": shot.answer}]
    return messages + [{"role": "user", "content": render_user(bench, item)}]


# ---- answer extraction from generated text (versioned rules; a changed rule gets a new name) ----

def _letter_v1(text: str, choices: Sequence[str]) -> Optional[str]:
    """letter-v1, first match wins: (1) "答案是/为/：X", "answer is X", "answer: X", "option X"; (2) the reply
    starts with the letter and punctuation ("C.", "(C)", "C、", "C："); (3) exactly one option letter stands alone
    in the reply ("C", "选D", "Liver, which is A"). Letters are upper case, among the question's options; any
    other reply ("A or B", "I am not sure") is unparsed and scored wrong."""
    letters = "".join(choices)
    text = (text or "").strip()
    patterns = [rf"答案\s*(?:是|为|应为|应该是)?\s*[:：]?\s*[(（]?([{letters}])(?![A-Za-z])",
                rf"(?i:answer)\s*(?:is|:)?\s*(?:option\s*)?[(]?([{letters}])(?![A-Za-z])",
                rf"(?i:option)\s+([{letters}])(?![A-Za-z])",
                rf"^[(（]?([{letters}])\s*[.．、:：)）]"]
    for pattern in patterns:
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    alone = set(re.findall(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text))
    return alone.pop() if len(alone) == 1 else None


def _yesno_v1(text: str, choices: Sequence[str]) -> Optional[str]:
    """yesno-v1: the first of yes / no / maybe as a whole word (any case); Chinese 是 / 否 / 可能 at the start."""
    found = re.search(r"\b(yes|no|maybe)\b", (text or "").lower())
    if found:
        return found.group(1)
    zh = re.match(r"\s*(是|否|可能)", text or "")
    return {"是": "yes", "否": "no", "可能": "maybe"}[zh.group(1)] if zh else None


EXTRACTORS = {"letter-v1": _letter_v1, "yesno-v1": _yesno_v1}


def extract(rule: str, text: str, choices: Sequence[str]) -> Optional[str]:
    return EXTRACTORS[rule](text, choices)
