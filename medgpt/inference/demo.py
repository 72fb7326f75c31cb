"""Web chat demo (Gradio): streaming, multi-turn, system prompt and generation sliders.

    medgpt demo outputs/runs/sft-tiny-cpu/<stamp> --port 7860      # open http://127.0.0.1:7860
"""
from __future__ import annotations

import argparse
from typing import List

from medgpt.errors import command
from medgpt.inference.chat import add_model_args, generation_overrides, load
from medgpt.modeling.generate import DEFAULTS, settings, stream

TITLE = "medgpt"
DESCRIPTION = "A medical assistant trained with medgpt. Research demo: not medical advice."


def _text(content) -> str:
    """Gradio 6 history content: a string, or a list of parts such as {"type": "text", "text": ...}."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(part) for part in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content)


def to_messages(message, history: List[dict], system: str) -> List[dict]:
    turns = [{"role": "system", "content": system}] if system and system.strip() else []
    turns += [{"role": h["role"], "content": _text(h["content"])} for h in history
              if h.get("role") in ("user", "assistant")]
    return turns + [{"role": "user", "content": _text(message)}]


def build_demo(model, tokenizer, *, system: str = "", defaults: dict = None):
    """The gr.ChatInterface; its fn streams the growing reply."""
    import gradio as gr

    saved = settings(model, **(defaults or {}))  # greedy settings carry no temperature / top_p

    def respond(message, history, system_prompt, max_new_tokens, temperature, top_p, repetition_penalty):
        text = ""
        for piece in stream(model, tokenizer, to_messages(message, history, system_prompt),
                            max_new_tokens=int(max_new_tokens), temperature=temperature, top_p=top_p,
                            repetition_penalty=repetition_penalty):
            text += piece
            yield text.strip()

    inputs = [
        gr.Textbox(system, label="System prompt"),
        gr.Slider(1, 2048, value=saved["max_new_tokens"], step=1, label="Max new tokens"),
        gr.Slider(0.0, 2.0, value=saved.get("temperature", 0.0), step=0.05, label="Temperature (0 = greedy)"),
        gr.Slider(0.05, 1.0, value=saved.get("top_p", DEFAULTS["top_p"]), step=0.05, label="Top-p"),
        gr.Slider(1.0, 3.0, value=saved["repetition_penalty"], step=0.05, label="Repetition penalty"),
    ]
    return gr.ChatInterface(respond, additional_inputs=inputs, title=TITLE, description=DESCRIPTION,
                            examples=[["头痛发热怎么办？"], ["What are the symptoms of diabetes?"]],
                            cache_examples=False, api_name="chat")


@command
def main(argv=None) -> int:

    parser = argparse.ArgumentParser(prog="medgpt demo", description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to reach it from other machines")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="a public gradio.live link (needs internet)")
    args = parser.parse_args(argv)
    model, tokenizer, _ = load(args)
    defaults = {k: v for k, v in generation_overrides(args).items() if v is not None}
    demo = build_demo(model, tokenizer, system=args.system or "", defaults=defaults)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0
