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
    "deepseek3": "<｜end▁of▁sentence｜>",
    "deepseek_r1": "<｜end▁of▁sentence｜>",
    "gemma": "<end_of_turn>",
    "glm4": "<|user|>",  # like ChatGLM3: an answer ends with the next role token (<|user|> / <|observation|>)
    "intern": "<eoa>",
    "intern2": "<|im_end|>",
    "llama2": "</s>",
    "llama3": "<|eot_id|>",
    "mistral": "</s>",
    "mistral_nemo": "</s>",
    "mistral_small": "</s>",
    "orion": "</s>",
    "phi4": "<|im_end|>",
    "qwen": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "qwen3_nothink": "<|im_end|>",
    "qwen3_5": "<|im_end|>",
    "qwen3_5_nothink": "<|im_end|>",
    "vicuna": "</s>",
    "xverse": "<|endoftext|>",
    "yi": "<|im_end|>",
}
# Further tokens that end an assistant turn (generation stops on them too).
# ChatGLM3 / GLM-4 end a tool call with <|observation|>, GLM-4 a last answer with <|endoftext|>
EXTRA_STOPS = {"chatglm3": ["<|observation|>"], "glm4": ["<|observation|>", "<|endoftext|>"]}
# Templates that render a tools list, assistant tool_calls and tool results (role "tool", or the legacy
# function_call / observation turns); the others raise a clear error.
TOOL_TEMPLATES = ("chatml", "qwen", "qwen3", "qwen3_nothink", "qwen3_5", "qwen3_5_nothink", "llama3", "chatglm3",
                  "glm4", "deepseek3", "deepseek_r1")
# Templates whose rendering reads enable_thinking (model.chat_template_kwargs), as Qwen3's official one does.
THINKING_TEMPLATES = ("qwen3", "qwen3_nothink", "qwen3_5", "qwen3_5_nothink", "deepseek_r1")


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
