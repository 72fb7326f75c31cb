"""The embedded default model is built offline and deterministically."""
import hashlib

from medgpt.modeling.tiny import build_tiny, corpus


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_same_settings_give_identical_files(tmp_path):
    texts = corpus()
    a = _digest(build_tiny(tmp_path / "a", texts, vocab_size=600, hidden_size=32, intermediate_size=64))
    b = _digest(build_tiny(tmp_path / "b", texts, vocab_size=600, hidden_size=32, intermediate_size=64))
    assert a == b
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= set(a)
    c = _digest(build_tiny(tmp_path / "c", texts, vocab_size=600, hidden_size=32, intermediate_size=64, seed=1))
    assert c["model.safetensors"] != a["model.safetensors"]


def test_tiny_has_the_qwen_chat_template_and_stops_on_im_end(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                              add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tiny_tokenizer.eos_token == "<|im_end|>"
    # the BPE learned the demo vocabulary: a medical word is far fewer tokens than bytes
    assert len(tiny_tokenizer("influenza")["input_ids"]) <= 3
