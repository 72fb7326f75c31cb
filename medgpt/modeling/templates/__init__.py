"""Chat templates: one Jinja file per template, installed on the tokenizer so final/ carries it.

Each template marks assistant spans with {% generation %} so SFT can train on exactly the assistant text and
its end-of-turn token. END_OF_TURN names the token that ends an assistant turn (generation stops on it).

    python -c "from medgpt.modeling.templates import load_template; print(load_template('qwen'))"
"""
from pathlib import Path

from medgpt.errors import UserError

HERE = Path(__file__).parent
END_OF_TURN = {
    "alpaca": "</s>",
    "baichuan": "</s>",
    "baichuan2": "</s>",
    "chatglm": "<eop>",
    "chatglm2": "</s>",
    "chatglm3": "<|user|>",  # ChatGLM3 ends an answer with the next role token (<|user|> / <|observation|>)
    "chatml": "<|im_end|>",
    "cohere": "<|END_OF_TURN_TOKEN|>",
    "deepseek": "<｜end▁of▁sentence｜>",
    "gemma": "<end_of_turn>",
    "intern": "<eoa>",
    "intern2": "<|im_end|>",
    "llama2": "</s>",
    "llama3": "<|eot_id|>",
    "mistral": "</s>",
    "orion": "</s>",
    "qwen": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "qwen3_nothink": "<|im_end|>",
    "vicuna": "</s>",
    "xverse": "<|endoftext|>",
    "yi": "<|im_end|>",
}
# Further tokens that end an assistant turn (generation stops on them too).
EXTRA_STOPS = {"chatglm3": ["<|observation|>"]}  # ChatGLM3 ends a tool call with <|observation|>
# Templates that render function_call / observation turns and a tools list; the others raise a clear error.
TOOL_TEMPLATES = ("chatml", "qwen", "qwen3", "qwen3_nothink", "llama3", "chatglm3")


def available() -> list:
    return sorted(p.stem for p in HERE.glob("*.jinja"))


def load_template(name: str) -> str:
    path = HERE / f"{name}.jinja"
    if not path.exists():
        raise UserError(f"model.template={name}: no such chat template; available: {', '.join(available())}")
    return path.read_text(encoding="utf-8")


def end_of_turn(name: str) -> str:
    return END_OF_TURN[name]


def stop_tokens(name: str) -> list:
    """Every token that ends an assistant turn of this template: its end-of-turn token first."""
    return [END_OF_TURN[name], *EXTRA_STOPS.get(name, [])]
