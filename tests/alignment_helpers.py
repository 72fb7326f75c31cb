"""Helpers of the alignment tests: synthetic pairs that differ obviously; errors raised before any model loads."""
import json
from pathlib import Path

TOPICS = ["angina", "asthma", "influenza", "migraine", "insomnia", "eczema", "gout", "anaemia", "acne", "otitis",
          "sinusitis", "bronchitis", "hepatitis", "arthritis", "gastritis", "cystitis"]


def write_obvious_pairs(path: Path, n: int = 32) -> Path:
    """TRL-style string pairs: chosen is a calm sentence, rejected the same junk every time."""
    rows = [{"prompt": f"How is {TOPICS[i % len(TOPICS)]} treated? ({i})",
             "chosen": f"See a doctor about {TOPICS[i % len(TOPICS)]}; treatment depends on the cause.",
             "rejected": "no no no no no no no no"} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def error_before_model_load(monkeypatch, tmp_path, *overrides) -> str:
    """Train with these overrides and return the UserError's message; fails the test if a model gets loaded."""
    import pytest

    import medgpt.training.run
    from conftest import train_in_process
    from medgpt.errors import UserError

    monkeypatch.setattr(medgpt.training.run, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(UserError) as e:
        train_in_process(tmp_path, *overrides)
    return str(e.value)
