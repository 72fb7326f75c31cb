"""A model whose output the test writes: the official Qwen3 tokenizer and chat template around the tiny random
Qwen3 (conftest.official), with each forward pass's last logits set so that greedy or sampled decoding yields the
scripted tokens. Everything else is real: the template, transformers' generate() (streamer, stopping criteria,
max_new_tokens, end-of-turn), the server and its parsers. Used by tests/test_serve.py and tests/test_chat.py.
"""
from __future__ import annotations

import functools
import time


@functools.lru_cache(maxsize=None)
def scripted_model():
    """(model, tokenizer): one per test session (loading costs a few seconds)."""
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    from conftest import official

    class Scripted(Qwen3ForCausalLM):
        """model.say(text) sets what the next generation writes (then <|im_end|>); `delay` slows each step,
        `fail_at` raises at that step; `steps` counts the steps of the current generation, `prompt` holds its
        prompt ids."""
        script_ids = None
        delay = 0.0
        fail_at = None
        steps = 0
        prompt = None

        queue = ()
        fresh = False

        def say(self, text: str, *later: str, delay: float = 0.0, fail_at=None):
            """The next generation writes text, the ones after it each of `later` in turn."""
            end = self.tokenizer_.convert_tokens_to_ids("<|im_end|>")
            scripts = [self.tokenizer_.encode(t, add_special_tokens=False) + [end] for t in (text, *later)]
            self.script_ids, self.queue, self.fresh = scripts[0], scripts[1:], True
            self.delay, self.fail_at = delay, fail_at

        def forward(self, input_ids=None, **kwargs):
            out = super().forward(input_ids=input_ids, **kwargs)
            if input_ids.shape[1] > 1:  # the prompt's pass: a new generation starts
                if not self.fresh and self.queue:
                    self.script_ids, self.queue = self.queue[0], self.queue[1:]
                self.fresh = False
                self.steps, self.prompt = 0, input_ids[0].tolist()
            step, self.steps = self.steps, self.steps + 1
            if self.fail_at is not None and step >= self.fail_at:
                raise RuntimeError("the scripted model failed on purpose")
            if self.delay:
                time.sleep(self.delay)
            if self.script_ids is not None:
                token = self.script_ids[min(step, len(self.script_ids) - 1)]
                out.logits[:, -1, :] = -1e9
                out.logits[:, -1, token] = 0.0
            return out

    folder = official("qwen3", model=True)
    model = Scripted.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.tokenizer_ = tokenizer
    return model, tokenizer
