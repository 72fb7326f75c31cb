"""Benchmark suites (eval=medical_zh | medical_en) on stand-ins in each benchmark's exact hub schema
(tests/data/benchmarks, read as a local hub mirror through datasets.load_dataset): hand-computed scores of a model
that always answers the first option, the answer-extraction rules, the table / metrics.json / sweep ranking /
pipeline, reproducibility and the batched scoring paths on the tiny model.

    python -m pytest tests/test_eval_suite.py -x -q --durations=0
"""
from __future__ import annotations

import contextlib
import io
import json

import pytest

from conftest import ROOT, compose, read_jsonl, train_in_process

STANDINS = ROOT / "tests" / "data" / "benchmarks"
HUB = f"eval.hub_root={STANDINS}"
STUB = "eval.backend=test_eval_suite:AlwaysFirst"

# A model that always answers the first option ("A"; "yes" for PubMedQA) scores the share of first-option answers
# in the stand-ins (tests/data/benchmarks/make_standins.py):
ALWAYS_FIRST = {
    "cmb": 2 / 4,  # 5 val questions, one multiple-answer (多项选择题) dropped by keep; answers A B A C
    "cmexam": 2 / 4,  # A B A C
    "medqa_mcmle": 2 / 4,  # A B A C
    "ceval_medical": 3 / 6,  # 3 subjects x 2: A B, A C, A B
    "cmmlu_medical": 12 / 16,  # 8 subjects x 2: (A, A) for even, (A, B) for odd subjects
    "medqa_usmle": 2 / 4,  # A B A C
    "medmcqa": 2 / 5,  # cop 0 1 0 2 3 -> A B A C D
    "pubmedqa": 2 / 4,  # yes no maybe yes
    "mmlu_medical": 6 / 12,  # 6 subjects x (A, B)
}
ZH = ["cmb", "cmexam", "medqa_mcmle", "ceval_medical", "cmmlu_medical"]
EN = ["medqa_usmle", "medmcqa", "pubmedqa", "mmlu_medical"]


class AlwaysFirst:
    """A Scorer (medgpt.evaluation.suite.Scorer, selected by eval.backend=<module>:<Class>) that prefers the first
    choice and writes its answer the way chat models do, so the extraction rule is exercised too."""

    name = "always-first"

    def __init__(self, model, tokenizer, settings, cfg):
        self.seen = []

    def loglik(self, requests):
        return [[-float(j) for j in range(len(choices))] for _, choices in requests]

    def generate(self, prompts, max_new_tokens):
        out = []
        for messages in prompts:
            question = messages[-1]["content"]
            out.append("yes, it does." if "Abstract:" in question else
                       "答案：A" if "答案" in question else "The answer is (A).")
        return out


# ---- configs ----

def test_every_benchmark_config_names_its_schema_prompt_and_extraction():
    from medgpt.evaluation.benchmarks import EXTRACTORS, OUR_FIELDS, REQUIRED

    for suite, names in (("medical_zh", ZH), ("medical_en", EN)):
        cfg = compose("stage=eval", f"eval={suite}")
        assert cfg.eval.suite == suite and list(cfg.eval.benchmarks) == names and list(cfg.data.eval_files) == []
        for name, spec in cfg.eval.benchmarks.items():
            assert all(spec.get(k) not in (None, "") for k in REQUIRED), name
            assert spec.name == name and spec.extract in EXTRACTORS
            assert set(spec.columns.values()) <= OUR_FIELDS and "question" in spec.columns.values()
            assert spec.prompt.version and "{question}" in spec.prompt.template
            assert (spec.kind == "yesno") == (name == "pubmedqa")
            assert name in (ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8")  # its schema evidence


# ---- answer extraction and schema normalisation (hand-made cases) ----

@pytest.mark.parametrize("text,expected", [
    ("答案：C", "C"), ("答案是B。", "B"), ("正确答案为 (D)", "D"), ("C", "C"), ("B. 肾上腺素", "B"),
    ("(A) Liver", "A"), ("The answer is C.", "C"), ("Answer: D", "D"), ("I choose option B", "B"),
    ("选D", "D"), ("Liver, which is A", "A"),
    ("I am not sure", None), ("A or B", None), ("答案：E", None), ("", None), ("All of these", None),
])
def test_letter_extraction_rule(text, expected):
    from medgpt.evaluation.benchmarks import extract

    assert extract("letter-v1", text, ["A", "B", "C", "D"]) == expected


@pytest.mark.parametrize("text,expected", [("Yes.", "yes"), ("no, it does not", "no"), ("Maybe", "maybe"),
                                           ("It is unclear", None), ("是的", "yes"), ("know", None)])
def test_yesno_extraction_rule(text, expected):
    from medgpt.evaluation.benchmarks import extract

    assert extract("yesno-v1", text, ["yes", "no", "maybe"]) == expected


def test_schemas_normalise_to_one_item_shape():
    from medgpt.evaluation.benchmarks import normalise

    def spec(columns, kind="mcq", keep=None):
        return {"kind": kind, "columns": columns, "keep": keep or {}}

    cmb = {"question": "Q", "option": {"A": "x", "B": "y", "C": None}, "answer": "B", "question_type": "单项选择题"}
    item, _ = normalise(spec({"question": "question", "option": "options", "answer": "answer"}), cmb, 0, None)
    assert item.options == {"A": "x", "B": "y"} and item.answer == "B" and item.id == "0"
    multi = {**cmb, "answer": "AB", "question_type": "多项选择题"}
    assert normalise(spec({"question": "question", "option": "options", "answer": "answer"}), multi, 1, None) == \
        (None, "several answers (multiple-answer question)")
    keep = spec({"question": "question", "option": "options", "answer": "answer"}, keep={"question_type": "单项选择题"})
    assert normalise(keep, multi, 1, None)[0] is None
    kv = {"question": "Q", "options": [{"key": "A", "value": "x"}, {"key": "B", "value": "y"}], "answer_idx": "A"}
    item, _ = normalise(spec({"question": "question", "options": "options", "answer_idx": "answer"}), kv, 0, "zh")
    assert item.options == {"A": "x", "B": "y"} and item.id == "zh/0"
    lines = {"Question": "Q", "Options": "A 阿司匹林\nB、布洛芬\nC. 对乙酰氨基酚", "Answer": "C"}
    item, _ = normalise(spec({"Question": "question", "Options": "options", "Answer": "answer"}), lines, 0, None)
    assert item.options == {"A": "阿司匹林", "B": "布洛芬", "C": "对乙酰氨基酚"} and item.answer == "C"
    medmcqa = {"id": "x1", "question": "Q", "opa": "p", "opb": "q", "opc": "r", "opd": "s", "cop": 3}
    item, _ = normalise(spec({"id": "id", "question": "question", "opa": "A", "opb": "B", "opc": "C", "opd": "D",
                              "cop": "answer"}), medmcqa, 0, None)
    assert item.answer == "D" and item.id == "x1"
    mmlu = {"question": "Q", "choices": ["p", "q", "r", "s"], "answer": 1}
    assert normalise(spec({"question": "question", "choices": "options", "answer": "answer"}), mmlu, 0, None)[0]\
        .answer == "B"
    pubmed = {"question": "Q", "context": {"contexts": ["a", "b"]}, "final_decision": "maybe"}
    item, _ = normalise(spec({"question": "question", "context.contexts": "context", "final_decision": "answer"},
                             kind="yesno"), pubmed, 0, None)
    assert (item.answer, item.context, item.options) == ("maybe", "a\nb", {})


# ---- the suite command on the stand-ins ----

@pytest.fixture(scope="module")
def zh_stub_run(tmp_path_factory):
    return train_in_process(tmp_path_factory.mktemp("zh"), "stage=eval", "eval=medical_zh", HUB, STUB,
                            "eval.few_shot=1")


def test_always_first_scores_what_it_should(zh_stub_run, tmp_path, monkeypatch):
    import sys
    from types import SimpleNamespace

    run_dir, metrics = zh_stub_run
    for name in ZH:
        assert metrics[f"{name}/accuracy"] == pytest.approx(ALWAYS_FIRST[name]), name
        assert metrics[f"{name}/gen_accuracy"] == pytest.approx(ALWAYS_FIRST[name]), name  # "答案：A" read as A
        assert metrics[f"{name}/gen_unparsed"] == 0
    assert metrics["medical_zh/macro_accuracy"] == pytest.approx(sum(ALWAYS_FIRST[n] for n in ZH) / 5)  # 0.55
    assert metrics["cmb/skipped"] == 1 and metrics["cmb/n"] == 4
    assert metrics["ceval_medical/physician/accuracy"] == pytest.approx(1 / 2)
    logged = []  # a live W&B run (as logger=wandb starts): the suite's numbers land under eval/
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(run=SimpleNamespace(summary={}), log=logged.append))
    _, en = train_in_process(tmp_path, "stage=eval", "eval=medical_en", HUB, STUB)
    for name in EN:
        assert en[f"{name}/accuracy"] == en[f"{name}/gen_accuracy"] == pytest.approx(ALWAYS_FIRST[name]), name
    assert en["medical_en/macro_accuracy"] == pytest.approx(0.475)  # (0.5 + 0.4 + 0.5 + 0.5) / 4
    assert logged[-1]["eval/medical_en/macro_accuracy"] == pytest.approx(0.475)
    assert logged[-1]["eval/pubmedqa/gen_accuracy"] == 0.5


def test_suite_writes_table_metrics_and_reproducibility_record(zh_stub_run):
    run_dir, metrics = zh_stub_run
    table = (run_dir / "suite.md").read_text(encoding="utf-8")
    assert "| cmmlu_medical | 16 | 0.75 | 0.75 | 0 | cmmlu-zh-v1 | 1 |" in table
    assert "| macro average | 34 | 0.55 | 0.55 |" in table
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["medical_zh/macro_accuracy"] == metrics["medical_zh/macro_accuracy"] and on_disk["suite"] == \
        "medical_zh"
    record = json.loads((run_dir / "suite.json").read_text(encoding="utf-8"))
    assert record["seed"] == 42 and record["few_shot"] == 1 and record["decoding"]["do_sample"] is False
    cmexam, cmb = record["benchmarks"]["cmexam"], record["benchmarks"]["cmb"]
    assert cmexam["prompt_version"] == "cmexam-zh-v1" and cmexam["fewshot_ids"] == ["validation:0"]
    assert len(cmb["fewshot_ids"]) == 2  # no few-shot split: k+1 val questions drawn with the seed
    assert metrics["cmb/fewshot_ids"] == cmb["fewshot_ids"] and metrics["cmb/prompt_version"] == "cmb-zh-v1"
    predictions = read_jsonl(run_dir / "predictions" / "cmb.jsonl")
    assert [p["loglik"] for p in predictions] == ["A"] * 4 and [p["gold"] for p in predictions] == list("ABAC")


def test_sweep_ranks_eval_runs_by_the_suite(zh_stub_run, tmp_path):
    from medgpt.tools.sweep import main

    run_dir, metrics = zh_stub_run
    better = tmp_path / "better"
    better.mkdir()
    (better / "metrics.json").write_text(json.dumps({**metrics, "status": "completed",
                                                     "medical_zh/macro_accuracy": 0.9, "cmb/accuracy": 1.0}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(run_dir), str(better), "--suite", "medical_zh", "--format", "json", "--no-plots",
                     "--out", str(tmp_path / "lb")]) == 0
    rows = json.loads(out.getvalue())
    assert [r["medical_zh/macro_accuracy"] for r in rows] == [0.9, pytest.approx(0.55)]  # best first
    assert rows[1]["cmb/accuracy"] == 0.5 and "cmmlu_medical/gen_accuracy" in rows[0]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(run_dir), "--suite", "medical_en", "--no-plots", "--out", str(tmp_path / "x")]) == 2


def test_missing_data_and_unavailable_backends_fail_before_the_model(tmp_path, monkeypatch):
    import sys

    from medgpt.errors import UserError

    with pytest.raises(UserError, match=r"cannot load .*eval.hub_root"):
        train_in_process(tmp_path / "a", "stage=eval", "eval=medical_en", f"eval.hub_root={tmp_path}",
                         "eval.benchmarks.medmcqa.hub_name=" + str(tmp_path / "nowhere"))
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm fails as if not installed
    with pytest.raises(UserError, match=r"pip install 'medgpt\[vllm\]'"):
        train_in_process(tmp_path / "b", "stage=eval", "eval=medical_en", HUB, "eval.backend=vllm")
    with pytest.raises(UserError, match="eval.methods"):
        train_in_process(tmp_path / "c", "stage=eval", "eval=medical_en", HUB, "eval.methods=[guess]")


# ---- the real (tiny) model: batched scoring, reproducibility ----

def test_tiny_model_suite_is_reproducible_and_batching_does_not_change_scores(tmp_path):
    common = ("stage=eval", "eval=medical_en", HUB, "eval.max_new_tokens=3", "eval.few_shot=1",
              "eval.benchmarks.mmlu_medical.hub_subsets=[anatomy,college_medicine]")
    run_a, first = train_in_process(tmp_path / "a", *common)
    _, second = train_in_process(tmp_path / "b", *common, "eval.batch_size=1")
    assert first["eval_backend"] == "hf" and first["mmlu_medical/n"] == 4
    scores = [k for k in first if k.endswith(("accuracy", "unparsed"))]
    assert len(scores) > 10 and {k: first[k] for k in scores} == {k: second[k] for k in scores}
    a = read_jsonl(run_a / "predictions" / "pubmedqa.jsonl")
    b = read_jsonl(tmp_path / "b" / "run" / "predictions" / "pubmedqa.jsonl")
    assert [p["generated"] for p in a] == [p["generated"] for p in b]
    for x, y in zip(a, b):  # batched (8) and one-at-a-time log-probabilities agree
        assert x["logprobs"] == pytest.approx(y["logprobs"], abs=2e-3)


def test_one_pass_per_question_equals_scoring_each_choice(tiny_dir):
    """The fast path (one forward pass per question, right-padded batch, the next-token distribution after the
    prompt) gives the log p of scoring each prompt + choice sequence alone (scoring.token_logprobs), the path
    multi-token choices take."""
    from medgpt.config import resolve
    from medgpt.evaluation.scoring import IGNORE, token_logprobs
    from medgpt.evaluation.suite import HFScorer
    from medgpt.modeling.load import load_for_inference

    model, tokenizer, _ = load_for_inference(str(tiny_dir))
    settings = resolve(compose("stage=eval"), {"cuda": False, "bf16": False})
    scorer = HFScorer(model, tokenizer, settings, batch_size=4)
    requests = [([{"role": "user", "content": "Q" + " longer" * i + "?"}], ["A", "B", "C", "D"]) for i in range(6)]
    fast = scorer.loglik(requests)
    for (messages, choices), values in zip(requests, fast):
        text, ids = scorer.prompt(messages)
        conts = [scorer.continuation(text, ids, c) for c in choices]
        assert all(len(c) == 1 for c in conts)  # so the fast path was taken
        alone = token_logprobs(model, [(ids + c, [IGNORE] * len(ids) + c) for c in conts], scorer.pad_id, 1)
        assert values == pytest.approx([total for total, _ in alone], abs=1e-4)
    multi = scorer.loglik([(m, ["yes it is", "no"]) for m, _ in requests[:3]])  # mixed lengths: per-choice path
    assert all(len(v) == 2 and v[0] < 0 and v[1] < 0 for v in multi)


def test_pipeline_can_end_with_the_suite(tmp_path, capsys):
    from medgpt.tools.pipeline import run_pipeline

    results = run_pipeline(["sft", "eval"], [f"output_root={tmp_path}", "logger=none", "sft:stage.args.max_steps=1",
                                             "eval:eval=medical_en", f"eval:{HUB}", f"eval:{STUB}"],
                           root=tmp_path / "chain")
    assert [r["status"] for r in results] == ["completed"] * 2
    assert results[1]["model_path"] == str(tmp_path / "chain" / "1-sft" / "final")
    assert results[1]["medical_en/macro_accuracy"] == pytest.approx(0.475)
    assert "medical_en/macro_accuracy=0.4750" in capsys.readouterr().out


def test_vllm_scorer_reads_the_choice_positions_of_prompt_logprobs(monkeypatch, tiny_tokenizer):
    """No GPU here: a stand-in `vllm` module with vLLM's call shapes (LLM(...).generate(prompts, SamplingParams)
    -> outputs with prompt_logprobs[k] = {token id: Logprob}) checks which positions VLLMScorer sums."""
    import sys
    from types import SimpleNamespace

    from medgpt.config import resolve
    from medgpt.evaluation.suite import VLLMScorer

    calls = []

    class LLM:
        def __init__(self, **kwargs):
            calls.append(kwargs)

        def generate(self, prompts, params, use_tqdm=False):
            calls.append(params)
            out = []
            for p in prompts:
                seq = p["prompt_token_ids"]  # log p of the token at k: -(k + 1) / 100, so sums name the positions
                logprobs = [None] + [{t: SimpleNamespace(logprob=-(k + 1) / 100)} for k, t in enumerate(seq)][1:]
                out.append(SimpleNamespace(prompt_logprobs=logprobs, outputs=[SimpleNamespace(text=" B. ")]))
            return out

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw))
    settings = resolve(compose("stage=eval"), {"cuda": False, "bf16": False})
    scorer = VLLMScorer("some/model", tiny_tokenizer, settings)
    assert calls[0]["model"] == "some/model" and calls[0]["seed"] == 42 and calls[0]["enable_prefix_caching"]
    messages = [{"role": "user", "content": "Which?"}]
    (values,) = scorer.loglik([(messages, ["A", "B C"])])
    text, ids = scorer.hf.prompt(messages)
    n, conts = len(ids), [scorer.hf.continuation(text, ids, c) for c in ("A", "B C")]
    expected = [-sum(k + 1 for k in range(n, n + len(c))) / 100 for c in conts]  # only the choice's positions
    assert values == pytest.approx(expected)
    assert calls[-1] == {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 1, "seed": 42}
    assert scorer.generate([messages], 5) == ["B."] and calls[-1]["temperature"] == 0.0
