"""Local lm-evaluation-harness tasks over the project's own demo files (the hub is not needed).

    python train.py stage=eval eval.lm_eval_tasks=[medgpt_mcq_demo] data.eval_files=[]
"""
from pathlib import Path

from datasets import Dataset, DatasetDict

from medgpt.config import demo_file
from medgpt.data.formats import mcq
from medgpt.data.loading import read_records
from medgpt.evaluation.prompts import mcq_prompt


def mcq_demo(**_):
    rows = [mcq(record) for _, record in read_records(Path(demo_file("mcq_demo.jsonl")))]
    return DatasetDict({"test": Dataset.from_list(rows)})


def doc_to_text(doc) -> str:
    options = {k: v for k, v in doc["options"].items() if v is not None}
    return mcq_prompt({"question": doc["question"], "options": options}) + "\nAnswer:"
