"""Small synthetic data for the alignment tests: pairs whose chosen and rejected answers differ obviously."""
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
