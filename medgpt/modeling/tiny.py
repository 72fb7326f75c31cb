"""The embedded default model: a tiny random-weight Qwen2 and a byte-level BPE tokenizer trained in-process on
the project's demo text. Built offline and deterministically (same settings -> identical files), cached.

    python -m medgpt.modeling.tiny            # build (or find) it and print its folder
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from medgpt.modeling.templates import END_OF_TURN, load_template
from medgpt.runs import RUN_INFO, write_run_info

DEMO = Path(__file__).resolve().parents[1] / "demo_data"
BUILD_VERSION = 1  # bump when the build below changes
DEFAULT_SHAPE = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, seed=0,
                     template="qwen")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def cache_root() -> Path:
    return Path(os.environ.get("MEDGPT_CACHE", Path.home() / ".cache" / "medgpt"))


@contextmanager
def publishing(final: Path, marker: str) -> Iterator[Path]:
    """A staging folder beside `final` to build a cache entry in; when the block ends without error it becomes
    `final` in one rename, so a half-built folder is never found. `marker`: a file every complete entry has. An
    incomplete `final` (a crash before this helper existed, files put by hand) is replaced; a complete one that
    another process published first is kept."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".building-"))
    try:
        yield staging
        if final.exists() and not (final / marker).exists():
            shutil.rmtree(final, ignore_errors=True)
        try:
            staging.rename(final)
        except OSError:  # another process finished first: use its copy
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def corpus() -> list:
    """Demo text the tokenizer learns from: the PT passages and every SFT turn, in file order."""
    lines = [line for line in (DEMO / "pt_demo.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    for line in (DEMO / "sft_demo.jsonl").read_text(encoding="utf-8").splitlines():
        lines += [turn["value"] for turn in json.loads(line)["conversations"]]
    return lines


def build_tokenizer(vocab_size: int, template: str, texts=None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts if texts is not None else corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=END_OF_TURN[template], pad_token="<|endoftext|>",
        chat_template=load_template(template), model_max_length=DEFAULT_SHAPE["max_position_embeddings"],
        padding_side="right", clean_up_tokenization_spaces=False)


def _key(shape: dict, texts_digest: str) -> str:
    blob = json.dumps({"shape": shape, "texts": texts_digest, "version": BUILD_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_tiny(out_dir: Path, texts=None, **overrides) -> Path:
    """Write model + tokenizer to out_dir (no caching)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    shape = {**DEFAULT_SHAPE, **overrides}
    tokenizer = build_tokenizer(shape["vocab_size"], shape["template"], texts)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"], num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"], max_position_embeddings=shape["max_position_embeddings"],
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(shape["seed"])
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, max_new_tokens=64)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_run_info(out_dir, {"template": shape["template"], "tiny": shape})
    return out_dir


def tiny_path(**overrides) -> Path:
    """The cached tiny model's folder, built on first use (atomically: a half-built folder is never used)."""
    shape = {**DEFAULT_SHAPE, **{k: v for k, v in overrides.items() if v is not None}}
    texts = corpus()
    # the chat template's text too: a template fixed in the code is a new tiny model, never a stale cached one
    digest = hashlib.sha256("\n".join([*texts, load_template(shape["template"])]).encode()).hexdigest()
    final = cache_root() / "tiny" / _key(shape, digest)
    if (final / RUN_INFO).exists():
        return final
    with publishing(final, RUN_INFO) as staging:
        build_tiny(staging, texts, **shape)
    return final


if __name__ == "__main__":
    print(tiny_path())
