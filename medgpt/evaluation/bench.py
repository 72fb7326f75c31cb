"""Questions per second of the suite's log-likelihood scoring against lm-evaluation-harness's HF backend (HFLM):
the same MCQ file, the same loaded model, the same batch size, both with the model's chat template.

    python -m medgpt.evaluation.bench --model ~/.cache/medgpt/official/qwen3-tiny --questions 400 --batch-size 16

The MCQ file is medgpt/demo_data/mcq_demo.jsonl repeated to --questions items, each question made distinct
("(Case n) ..."; lm-eval scores a repeated prompt once). medgpt:
`suite.HFScorer.loglik` (one forward pass per question when every choice is one token); lm-eval: a local
multiple_choice task over the same file (choices A-D, its own request batching and context caching). Both are
timed around scoring only, after one warm-up pass, by the wall clock and by this process's CPU time (on a shared
machine the CPU time is the fairer of the two); the accuracy of both is printed as a check that they agree.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import List

from medgpt.config import compose, demo_file, resolve
from medgpt.evaluation import benchmarks as bm
from medgpt.evaluation.suite import HFScorer
from medgpt.modeling.hardware import device_info
from medgpt.modeling.load import load_for_inference

SPEC = {"name": "bench_mcq", "language": "en", "kind": "mcq", "hub_name": "json", "hub_split": "test",
        "columns": {"question": "question", "options": "options", "answer": "answer"},
        "prompt": {"version": "bench-v1", "instruction": "Answer with the letter of the correct option.",
                   "template": "{instruction}\n\nQuestion: {question}\n{options}\nAnswer:"},
        "extract": "letter-v1"}
TASK = """task: medgpt_bench_mcq
dataset_path: json
dataset_kwargs:
  data_files: {{test: {file}}}
test_split: test
output_type: multiple_choice
doc_to_text: "Answer with the letter of the correct option.\\n\\nQuestion: {{{{question}}}}\\nA. {{{{options.A}}}}\\nB. {{{{options.B}}}}\\nC. {{{{options.C}}}}\\nD. {{{{options.D}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(answer)}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


def write_file(folder: Path, n: int) -> Path:
    rows = [json.loads(line) for line in Path(demo_file("mcq_demo.jsonl")).read_text().splitlines() if line.strip()]
    path = folder / "mcq.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            row = rows[i % len(rows)]  # every prompt distinct: lm-eval would score repeated prompts once
            f.write(json.dumps({**row, "question": f"(Case {i + 1}) {row['question']}", "id": i}) + "\n")
    return path


def medgpt_rate(model, tokenizer, path: Path, batch_size: int, settings) -> tuple:
    spec = {**SPEC, "hub_data_files": {"test": str(path)}}
    bench = bm.load_benchmark("bench_mcq", spec, hub_root=None, limit=None, few_shot=0)
    scorer = HFScorer(model, tokenizer, settings, batch_size)
    requests = [(bm.messages_for(bench, it, 0), bench.choices_of(it)) for it in bench.items]
    scorer.loglik(requests[:batch_size])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    scores = scorer.loglik(requests)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    correct = sum(max(range(4), key=lambda j: s[j]) == "ABCD".index(it.answer) for s, it in zip(scores, bench.items))
    return len(requests) / seconds, len(requests) / cpu, correct / len(requests)


def lm_eval_rate(model, tokenizer, path: Path, batch_size: int, max_length: int) -> tuple:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks = path.parent / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "bench.yaml").write_text(TASK.format(file=path), encoding="utf-8")
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    simple_evaluate(model=lm, tasks=["medgpt_bench_mcq"], task_manager=manager, limit=batch_size,
                    apply_chat_template=True)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    results = simple_evaluate(model=lm, tasks=["medgpt_bench_mcq"], task_manager=manager,
                              apply_chat_template=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    n = results["n-samples"]["medgpt_bench_mcq"]["effective"]
    return n / seconds, n / cpu, results["results"]["medgpt_bench_mcq"]["acc,none"]


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medgpt.evaluation.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder (run folder, final/, hub id)")
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args(argv)

    import torch

    model, tokenizer, _ = load_for_inference(args.model)
    model.eval()
    settings = resolve(compose(["stage=eval", f"model.max_length={args.max_length}"]), device_info())
    with tempfile.TemporaryDirectory() as tmp:
        path = write_file(Path(tmp), args.questions)
        ours, our_cpu, our_acc = medgpt_rate(model, tokenizer, path, args.batch_size, settings)
        theirs, their_cpu, their_acc = lm_eval_rate(model, tokenizer, path, args.batch_size, args.max_length)
    print(json.dumps({"model": args.model, "questions": args.questions, "batch_size": args.batch_size,
                      "device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
                      "medgpt_questions_per_s": round(ours, 2), "lm_eval_hf_questions_per_s": round(theirs, 2),
                      "speedup_wall": round(ours / theirs, 2),
                      "medgpt_questions_per_cpu_s": round(our_cpu, 2), "lm_eval_questions_per_cpu_s": round(their_cpu, 2),
                      "speedup_cpu": round(our_cpu / their_cpu, 2),
                      "medgpt_accuracy": our_acc, "lm_eval_accuracy": their_acc}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
