"""Optional LLM-as-judge for generated answers: any OpenAI-compatible endpoint, off unless eval.judge_url is set.

The key is read from the environment variable named by eval.judge_key_env (default OPENAI_API_KEY); it never
enters the config, logs or outputs.

    python train.py stage=eval model.path=<run> eval.files=[qa.jsonl] eval.judge_url=http://localhost:8000/v1
"""
from __future__ import annotations

import os
import re
from typing import List, Optional

from medgpt.errors import UserError

PROMPT = ("You grade answers to medical questions.\nQuestion: {question}\nReference answer: {gold}\n"
          "Candidate answer: {prediction}\nHow correct and complete is the candidate compared with the reference? "
          "Reply with a single integer from 0 (wrong) to 10 (fully correct).")


def parse_grade(reply: str) -> Optional[float]:
    """The first integer 0..10 in the judge's reply, scaled to 0..1; None when there is none."""
    found = re.search(r"\b(10|[0-9])\b", reply or "")
    return int(found.group(1)) / 10 if found else None


def judge_all(eval_cfg, examples: List[dict]) -> List[Optional[float]]:
    import openai

    client = openai.OpenAI(base_url=eval_cfg.judge_url, api_key=os.environ.get(eval_cfg.judge_key_env) or "none",
                           timeout=120, max_retries=1)
    grades = []
    for example in examples:
        try:
            reply = client.chat.completions.create(
                model=eval_cfg.judge_model, temperature=0,
                messages=[{"role": "user", "content": PROMPT.format(**example)}])
        except openai.OpenAIError as e:
            raise UserError(f"eval.judge_url={eval_cfg.judge_url}: the judge call failed ({type(e).__name__}: {e}). "
                            f"Check the URL, eval.judge_model and the key in ${eval_cfg.judge_key_env}, or unset "
                            f"eval.judge_url") from None
        grades.append(parse_grade(reply.choices[0].message.content))
    return grades
