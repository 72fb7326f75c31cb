"""Merge a LoRA/QLoRA adapter into its base model and export a standalone model folder (safetensors + tokenizer +
chat template + generation config) that loads with plain transformers, vLLM or llama.cpp converters.

    medgpt merge outputs/runs/sft-tiny-lora/<stamp>/final --output merged/
    medgpt merge <run> --output merged/ --dtype bfloat16

QLoRA: the adapter was trained against the *quantized* base, so the base is loaded quantized exactly as in
training and dequantized before the merge; the merged model then computes what the adapter model computed.
An extended vocabulary (embeddings saved with the adapter) keeps its size.
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Optional

from medgpt.errors import UserError, command
from medgpt.modeling.hardware import quantization_config
from medgpt.modeling.load import (LoadPolicy, add_consent_flags, check_source, load_failure, resolve_path,
                                 show_held_notices)
from medgpt.runs import ADAPTER_WEIGHTS, GENERATION_CONFIG, adapter_base, run_info, write_run_info

log = logging.getLogger(__name__)
DTYPES = ("auto", "float32", "bfloat16", "float16")


def adapter_vocab_rows(adapter_dir: Path) -> Optional[int]:
    """Rows of the embedding/head saved with the adapter (modules_to_save), i.e. the trained vocabulary size."""
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            if "modules_to_save" in key and key.endswith(".weight") and ("embed" in key or "lm_head" in key):
                return f.get_slice(key).get_shape()[0]
    return None


def load_base(base: str, quantization: Optional[str], dtype, policy: LoadPolicy = LoadPolicy()):
    """The base as the adapter saw it in training: quantized (then dequantized) for QLoRA, else as saved."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=dtype, trust_remote_code=policy.trust_remote_code,
                  use_safetensors=None if policy.allow_pickle else True)
    if not quantization:
        return AutoModelForCausalLM.from_pretrained(base, **kwargs)
    from types import SimpleNamespace

    show_held_notices()
    compute = torch.float32 if dtype == "auto" else dtype
    kwargs.update(dtype=compute, device_map={"": "cuda:0" if torch.cuda.is_available() else "cpu"},
                  quantization_config=quantization_config(SimpleNamespace(quantization=quantization), compute))
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    return model.dequantize(dtype=compute)


def merge(final: str, output: str, dtype: str = "auto", quantization: Optional[str] = "from-run",
          policy: LoadPolicy = LoadPolicy()) -> Path:
    """Merge the adapter in `final` (a run folder or its final/) into its base; write the result to `output`.
    policy: this command's consent (--trust-remote-code, --allow-pickle), for the adapter and its base."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    path = Path(resolve_path(final))
    base = adapter_base(str(path))
    if base is None:
        raise UserError(f"{path} holds full weights, not a LoRA adapter: nothing to merge (load it directly)")
    out = Path(output)
    if out.resolve() == path.resolve():
        raise UserError("--output must differ from the adapter folder")
    check_source(str(path), policy, what="adapter")
    info = run_info(str(path))
    if quantization == "from-run":
        quantization = info.get("quantization")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=policy.trust_remote_code)
        model = load_base(base, quantization, torch_dtype, policy)
    except (OSError, ValueError) as e:
        raise load_failure(e, "base", base, policy) from None
    rows = adapter_vocab_rows(path) or max(len(tokenizer), model.get_input_embeddings().weight.shape[0])
    if rows != model.get_input_embeddings().weight.shape[0]:
        log.info("vocabulary: %d -> %d rows (extended in training)", model.get_input_embeddings().weight.shape[0],
                 rows)
        model.resize_token_embeddings(rows)
    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if (path / GENERATION_CONFIG).exists():
        shutil.copy(path / GENERATION_CONFIG, out / GENERATION_CONFIG)
    write_run_info(out, {
        **info, "adapter": False, "base_model": None, "merged_from": str(path), "merged_into": base,
        "quantization": None, "dequantized_from": quantization, "vocab_rows": rows})
    return out


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="medgpt merge", description=__doc__.split("\n")[0])
    parser.add_argument("adapter", help="a run folder or its final/ holding a LoRA/QLoRA adapter")
    parser.add_argument("--output", required=True, help="folder for the merged model")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype (auto: the base's)")
    add_consent_flags(parser, "the base model's")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = merge(opts.adapter, opts.output, opts.dtype,
                policy=LoadPolicy.of_args(opts))
    print(f"merged model: {out}\nchat         medgpt chat {out}")
    return 0
