"""stage=eval and eval_after_train: metrics on known inputs, the fine-tune-beats-untrained scenario on the tiny
model, LoRA run folders, the judge hook, the lm-evaluation-harness bridge and the comparison table.

    python -m pytest tests/test_eval.py -x -q --durations=0
"""
from __future__ import annotations

import csv
import json
import math
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from conftest import DEMO, compose, read_jsonl, train_in_process

MCQ = DEMO / "mcq_demo.jsonl"


# ---- metric functions on known inputs (hand-computed values) ----

def test_text_metrics_known_values():
    from medgpt.evaluation.metrics import exact_match, rouge_l, token_f1, tokens

    # ROUGE-L: tokens [a, cardiologist, treats, angina] vs [cardiologist]: LCS 1, P 1/4, R 1 -> F = 2PR/(P+R) = 0.4
    assert rouge_l("a cardiologist treats angina", "cardiologist") == pytest.approx(0.4)
    # LCS of "the cat sat on the mat" / "the cat lay on the mat" = 5 of 6 tokens each -> 5/6
    assert rouge_l("the cat lay on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    # F1 drops articles: [cardiologist, treats, angina] vs [cardiologist] -> P 1/3, R 1 -> 0.5
    assert token_f1("a cardiologist treats angina", "cardiologist") == pytest.approx(0.5)
    assert token_f1("see a urologist", "a cardiologist") == 0.0
    assert exact_match("The Cardiologist.", "cardiologist") == 1.0
    assert exact_match("cardiologist now", "cardiologist") == 0.0
    # Chinese is scored by character: 高血糖 vs 高血压 share 高血 -> P = R = 2/3
    assert tokens("高血压 is high BP") == ["高", "血", "压", "is", "high", "bp"]
    assert rouge_l("高血糖", "高血压") == pytest.approx(2 / 3)
    assert token_f1("高血压患者", "高血压") == pytest.approx(2 * (3 / 5) * 1 / (3 / 5 + 1))
    assert exact_match("高血压。", "高血压") == 1.0


def test_judge_grade_parsing():
    from medgpt.evaluation.judge import parse_grade

    assert parse_grade("Score: 7/10") == pytest.approx(0.7)
    assert parse_grade("10") == 1.0
    assert parse_grade("no number here") is None


# ---- formats: MedQA, C-Eval and CMExam shapes ----

def test_mcq_formats_detected_and_normalised():
    from medgpt.data.formats import RecordError, convert, detect

    medqa = {"question": "Q?", "options": {"A": "x", "B": "y", "C": "z"}, "answer": "z", "answer_idx": "C",
             "meta_info": "step1"}
    assert detect(medqa) == "mcq" and convert("mcq", medqa)["answer"] == "C"
    ceval = {"id": 1, "question": "哪种?", "A": "甲", "B": "乙", "C": "丙", "D": "丁", "answer": "B"}
    assert detect(ceval) == "ceval"
    assert convert("ceval", ceval) == {"question": "哪种?", "options": {"A": "甲", "B": "乙", "C": "丙", "D": "丁"},
                                       "answer": "B"}
    cmexam = {"Question": "首选药物是", "Options": "A 阿司匹林\nB 布洛芬\nC、对乙酰氨基酚", "Answer": "C",
              "Explanation": ""}
    assert detect(cmexam) == "cmexam"
    assert convert("cmexam", cmexam)["options"] == {"A": "阿司匹林", "B": "布洛芬", "C": "对乙酰氨基酚"}
    with pytest.raises(RecordError, match="several letters"):
        convert("cmexam", {**cmexam, "Answer": "AB"})
    with pytest.raises(RecordError, match="neither an option letter"):
        convert("mcq", {"question": "Q", "options": ["x", "y"], "answer": "E"})


def test_bad_eval_file_fails_with_line_before_the_model(tmp_path):
    from medgpt.errors import DataError, UserError

    bad = tmp_path / "bad.jsonl"
    rows = read_jsonl(MCQ)[:3]
    rows[1]["answer"] = "F"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"bad.jsonl:2: answer 'F'"):
        train_in_process(tmp_path, "stage=eval", f"data.eval_files=[{bad}]")
    with pytest.raises(UserError, match="nothing to score"):
        train_in_process(tmp_path, "stage=eval", "data.eval_files=[]")
    with pytest.raises(UserError, match="needs eval.files"):
        train_in_process(tmp_path, "eval_after_train=true", "stage.args.max_steps=1")


def test_eval_configs_compose():
    cfg = compose("stage=eval")
    assert cfg.stage.module == "medgpt.stages.eval" and cfg.data.name == "eval_demo"
    assert all(Path(f).exists() for f in cfg.data.eval_files) and len(cfg.data.eval_files) == 5
    assert compose("stage=eval", "eval.few_shot=2", "eval.mcq_scoring=text").eval.few_shot == 2


# ---- the scenario: fine-tuned on the answers beats the untrained tiny model ----

@pytest.fixture(scope="session")
def answers_file(tmp_path_factory):
    """SFT chats built from the MCQ file: the rendered question, the correct option's text as the reply."""
    from medgpt.data.formats import mcq
    from medgpt.evaluation.prompts import mcq_messages, mcq_target

    path = tmp_path_factory.mktemp("answers") / "answers.jsonl"
    rows = [mcq(r) for r in read_jsonl(MCQ)]
    path.write_text("".join(json.dumps({"messages": mcq_messages(r, [], "text") + [
        {"role": "assistant", "content": mcq_target(r, r["answer"], "text")}]}) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def untrained_eval(tmp_path_factory):
    return train_in_process(tmp_path_factory.mktemp("before"), "stage=eval", f"data.eval_files=[{MCQ}]",
                            "eval.mcq_scoring=text")


@pytest.fixture(scope="session")
def finetuned_run(tmp_path_factory, answers_file):
    return train_in_process(tmp_path_factory.mktemp("after"), f"data.train_files=[{answers_file}]",
                            "data.eval_split=0", "stage.args.max_steps=40", "stage.args.learning_rate=3e-3",
                            "stage.args.per_device_train_batch_size=20", "stage.args.lr_scheduler_type=constant",
                            "eval_after_train=true", f"eval.files=[{MCQ}]", "eval.mcq_scoring=text")


def test_finetuned_model_beats_untrained_on_mcq(untrained_eval, finetuned_run):
    before_dir, before = untrained_eval
    run_dir, after = finetuned_run
    print(f"\nmcq_demo accuracy (text scoring): untrained tiny {before['mcq_accuracy']:.2f} -> "
          f"fine-tuned {after['eval/mcq_accuracy']:.2f}")
    assert after["eval/mcq_accuracy"] > before["mcq_accuracy"]
    assert before["mcq_demo/n"] == 20 and after["eval/mcq_demo/n"] == 20
    # the eval run folder: metrics.json for sweep.py, predictions for error analysis
    on_disk = json.loads((before_dir / "metrics.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["mcq_accuracy"] == before["mcq_accuracy"]
    predictions = read_jsonl(before_dir / "predictions" / "mcq_demo.jsonl")
    assert len(predictions) == 20 and {"question", "prediction", "gold", "score"} <= predictions[0].keys()
    assert sum(p["score"] for p in predictions) / 20 == pytest.approx(before["mcq_accuracy"])
    assert json.loads((run_dir / "metrics.json").read_text())["eval/mcq_accuracy"] == after["eval/mcq_accuracy"]


def test_stage_eval_of_a_run_folder_matches_eval_after_train(tmp_path, finetuned_run):
    run_dir, after = finetuned_run
    _, again = train_in_process(tmp_path, "stage=eval", f"model.path={run_dir}", f"data.eval_files=[{MCQ}]",
                                "eval.mcq_scoring=text")
    assert again["mcq_accuracy"] == after["eval/mcq_accuracy"]
    assert again["model_path"] == str(run_dir / "final")


# ---- LoRA run folders, every task kind, preference reference ----

@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, answers_file):
    return train_in_process(tmp_path_factory.mktemp("lora"), "hardware=lora", f"data.train_files=[{answers_file}]",
                            "data.eval_split=0", "stage.args.max_steps=3", "stage.args.learning_rate=1e-2")[0]


def test_eval_of_lora_run_folder_all_kinds(tmp_path, lora_run):
    assert (lora_run / "final" / "adapter_config.json").exists()
    files = [DEMO / f for f in ("mcq_demo.jsonl", "qa_demo.jsonl", "sft_demo.jsonl", "preference_demo.jsonl")]
    run_dir, metrics = train_in_process(tmp_path / "merged", "stage=eval", f"model.path={lora_run}",
                                        f"data.eval_files=[{','.join(map(str, files))}]", "data.max_samples=4",
                                        "eval.max_new_tokens=6", "eval.few_shot=1")
    for key in ("mcq_accuracy", "qa_exact_match", "qa_f1", "qa_rouge_l", "perplexity", "pref_accuracy",
                "pref_margin"):
        assert isinstance(metrics[key], float), key
    assert 1 < metrics["perplexity"] < 1e6 and math.isclose(math.log(metrics["perplexity"]), metrics["nll"])
    for name in ("mcq_demo", "qa_demo", "sft_demo", "preference_demo"):
        assert len(read_jsonl(run_dir / "predictions" / f"{name}.jsonl")) == 4
    qa = read_jsonl(run_dir / "predictions" / "qa_demo.jsonl")[0]
    assert {"question", "prediction", "gold", "exact_match", "f1", "rouge_l"} <= qa.keys()
    # implicit reward vs the adapter's base: merged adapter + base loaded as reference (hardware=cpu) must agree
    # with the adapter kept and switched off for the reference (hardware=lora)
    _, kept = train_in_process(tmp_path / "kept", "stage=eval", "hardware=lora", f"model.path={lora_run}",
                               f"data.eval_files=[{DEMO / 'preference_demo.jsonl'}]", "data.max_samples=4")
    assert metrics["pref_margin"] != 0
    assert kept["pref_margin"] == pytest.approx(metrics["pref_margin"], rel=1e-3, abs=1e-5)


def test_reward_model_scores_preferences_only(tmp_path, tiny_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from medgpt.errors import UserError

    rm_dir = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1).save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(rm_dir)
    pref = DEMO / "preference_demo.jsonl"
    run_dir, metrics = train_in_process(tmp_path / "e", "stage=eval", f"model.path={rm_dir}",
                                        f"data.eval_files=[{pref}]", "data.max_samples=4")
    rows = read_jsonl(run_dir / "predictions" / "preference_demo.jsonl")
    assert [r["score"] for r in rows] == [float(r["chosen_reward"] > r["rejected_reward"]) for r in rows]
    assert metrics["pref_accuracy"] == pytest.approx(sum(r["score"] for r in rows) / 4)
    with pytest.raises(UserError, match="reward model"):
        train_in_process(tmp_path / "f", "stage=eval", f"model.path={rm_dir}", f"data.eval_files=[{MCQ}]")


# ---- W&B, judge, lm-evaluation-harness, comparison ----

def test_metrics_logged_to_wandb_under_eval(monkeypatch):
    """The key mapping only (a live offline W&B run costs ~1 min here): every number once, under eval/."""
    from types import SimpleNamespace

    from medgpt.evaluation.report import log_wandb

    logged = []
    fake = SimpleNamespace(run=SimpleNamespace(summary={}), log=logged.append)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log_wandb({"mcq_accuracy": 0.5, "mcq_demo/accuracy": 0.5, "eval/qa_f1": 0.25, "mcq_demo/kind": "mcq"})
    assert logged == [{"eval/mcq_accuracy": 0.5, "eval/mcq_demo/accuracy": 0.5, "eval/qa_f1": 0.25}]
    assert fake.run.summary == logged[0]


def test_llm_judge_hook_calls_an_openai_compatible_url(monkeypatch):
    from omegaconf import OmegaConf

    from medgpt.config import EvalConfig
    from medgpt.evaluation.judge import judge_all

    seen = []

    class Judge(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers.get("Authorization"), body["messages"][0]["content"]))
            reply = json.dumps({"id": "1", "object": "chat.completion", "created": 0, "model": body["model"],
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": "8"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    cfg = OmegaConf.structured(EvalConfig(judge_url=f"http://127.0.0.1:{server.server_port}/v1",
                                          judge_key_env="MY_JUDGE_KEY"))
    try:
        grades = judge_all(cfg, [{"question": "Which doctor for gout?", "prediction": "a rheumatologist",
                                  "gold": "a rheumatologist"}])
    finally:
        server.shutdown()
    assert grades == [0.8]
    assert seen[0][0] == "/v1/chat/completions" and seen[0][1] == "Bearer sk-test"
    assert "Which doctor for gout?" in seen[0][2]


def test_lm_eval_missing_gives_clear_message(monkeypatch):
    from medgpt.errors import UserError
    from medgpt.evaluation.harness import require_lm_eval

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now fails as if not installed
    with pytest.raises(UserError, match="pip install"):
        require_lm_eval()


def test_lm_eval_local_task_on_our_model(tmp_path, lora_run):
    import lm_eval  # noqa: F401  (in [dev]: CI runs this test, it is not skipped)
    run_dir, metrics = train_in_process(tmp_path, "stage=eval", f"model.path={lora_run}", "data.eval_files=[]",
                                        "eval.lm_eval_tasks=[medgpt_mcq_demo]", "eval.lm_eval_limit=4")
    assert 0 <= metrics["lm_eval/medgpt_mcq_demo/acc"] <= 1
    assert "medgpt_mcq_demo" in json.loads((run_dir / "lm_eval" / "results.json").read_text())


def test_compare_command_uses_the_sweep_table(untrained_eval, finetuned_run):
    from medgpt.cli import main

    (before_dir, before), (after_dir, after) = untrained_eval, finetuned_run
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["eval", "compare", str(before_dir), str(after_dir), "--sort=-mcq_accuracy", "--format", "csv"])
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    # best first; the eval_after_train run's eval/mcq_accuracy lands in the same column as stage=eval's
    assert [float(r["mcq_accuracy"]) for r in table] == [after["eval/mcq_accuracy"], before["mcq_accuracy"]]
    assert table[0]["job"] == f"{after_dir.parent.name}/{after_dir.name}" and "perplexity" not in table[0]


def test_chat_and_preference_scoring_render_the_records_tools(tiny_tokenizer, monkeypatch):
    """Eval renders a record's tool definitions as SFT does: a perplexity or preference score conditions on them."""
    from medgpt.config import GPU_DEVICE, resolve
    from medgpt.evaluation import tasks as t

    cfg = compose("stage=eval")
    ctx = t.Context(cfg, resolve(cfg, GPU_DEVICE), model=None, tokenizer=tiny_tokenizer, reference=None)
    tools = [{"type": "function", "function": {"name": "lookup_dose", "description": "剂量查询 only-in-tools",
                                               "parameters": {"type": "object", "properties": {}}}}]
    chat = {"messages": [{"role": "user", "content": "头痛"}, {"role": "assistant", "content": "休息"}], "tools": tools}
    pair = {"prompt": chat["messages"][:1], "chosen": chat["messages"][1:], "tools": tools,
            "rejected": [{"role": "assistant", "content": "不知道"}]}
    seen = []
    monkeypatch.setattr(t.Context, "logprobs",
                        lambda self, examples: seen.extend(examples) or [(-1.0, 1)] * len(examples))
    monkeypatch.setattr(t, "_reference_logprobs", lambda ctx, examples: [0.0] * len(examples))
    monkeypatch.setattr(t, "_is_reward_model", lambda model: False)
    t.score_perplexity(ctx, t.Task("c", "chat", "c.jsonl", [chat]))
    t.score_preference(ctx, t.Task("p", "preference", "p.jsonl", [pair]))
    assert len(seen) == 3 and all("only-in-tools" in tiny_tokenizer.decode(ids) for ids, _ in seen)
    labelled = [tiny_tokenizer.decode([i for i, label in zip(ids, labels) if label != -100]) for ids, labels in seen]
    assert "休息" in labelled[0] and "only-in-tools" not in labelled[0]  # the definitions are context, never scored
