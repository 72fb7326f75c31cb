"""Chat templates: one Jinja file per template, installed on the tokenizer so final/ carries it.

Each template marks assistant spans with {% generation %} so SFT can train on exactly the assistant text and
its end-of-turn token. END_OF_TURN names the token that ends an assistant turn (generation stops on it).

    python -c "from medgpt.templates import load_template; print(load_template('qwen'))"
"""
from pathlib import Path

from medgpt.errors import UserError

HERE = Path(__file__).parent
END_OF_TURN = {
    "chatml": "<|im_end|>",
    "qwen": "<|im_end|>",
    "llama3": "<|eot_id|>",
}


def available() -> list:
    return sorted(p.stem for p in HERE.glob("*.jinja"))


def load_template(name: str) -> str:
    path = HERE / f"{name}.jinja"
    if not path.exists():
        raise UserError(f"model.template={name}: no such chat template; available: {', '.join(available())}")
    return path.read_text(encoding="utf-8")


def end_of_turn(name: str) -> str:
    return END_OF_TURN[name]
