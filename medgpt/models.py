"""The one way to load a model and tokenizer: hub id, local folder, a run's final/ (full weights or a LoRA
adapter on its base) or the embedded tiny model; chat template installed; LoRA/QLoRA/freeze applied.

    python -c "from medgpt.models import resolve_path; print(resolve_path('tiny'))"
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from medgpt.errors import UserError
from medgpt.templates import end_of_turn, load_template

log = logging.getLogger(__name__)
ADAPTER_FILE = "adapter_config.json"
RUN_INFO = "medgpt.json"  # written into every final/: template, base model, adapter or not


def resolve_path(path: str, tiny: Optional[dict] = None) -> str:
    """'tiny' -> the cached embedded model; a run folder -> its final/; anything else as given (hub id or folder)."""
    if path == "tiny":
        from medgpt.tiny import tiny_path

        return str(tiny_path(**(tiny or {})))
    p = Path(path).expanduser()
    if p.is_dir() and not (p / "config.json").exists() and (p / "final").is_dir():
        return str(p / "final")
    if p.exists() and p.is_dir() and not any((p / f).exists() for f in ("config.json", ADAPTER_FILE)):
        raise UserError(f"model.path={path} is a folder but holds no model (no config.json or {ADAPTER_FILE}); "
                        f"point it at a run's final/ folder or a model folder")
    if not p.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise UserError(f"model.path={path}: no such folder")
    return str(p) if p.exists() else path


def adapter_base(path: str) -> Optional[str]:
    """The base model of a LoRA adapter folder, or None if the folder holds full weights."""
    config = Path(path) / ADAPTER_FILE
    if not config.exists():
        return None
    return json.loads(config.read_text())["base_model_name_or_path"]


def run_info(path: str) -> dict:
    info = Path(path) / RUN_INFO
    return json.loads(info.read_text()) if info.exists() else {}


def load_tokenizer(model_cfg, path: Optional[str] = None):
    """Tokenizer with the model config's chat template installed (so every saved final/ carries it)."""
    from transformers import AutoTokenizer

    path = path or resolve_path(model_cfg.path, model_cfg.tiny)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    except OSError as e:
        raise UserError(f"model.path={model_cfg.path}: cannot load a tokenizer from {path} ({e})") from None
    tokenizer.chat_template = load_template(model_cfg.template)
    eot = end_of_turn(model_cfg.template)
    if eot not in tokenizer.get_vocab():
        raise UserError(f"model.template={model_cfg.template} ends turns with {eot}, which the tokenizer of "
                        f"{model_cfg.path} does not know; choose the template of this model family")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or eot
    return tokenizer


def _check_cuda_features(model_cfg, hw) -> None:
    import importlib.util

    import torch

    if hw.quantization and not torch.cuda.is_available():
        import bitsandbytes  # noqa: F401  (bitsandbytes >= 0.45 ships a CPU backend; only fail without it)
    if model_cfg.attn_implementation == "flash_attention_2":
        if not torch.cuda.is_available():
            raise UserError("model.attn_implementation=flash_attention_2 needs a CUDA GPU; use sdpa (or hardware=cpu)")
        if importlib.util.find_spec("flash_attn") is None:
            raise UserError("model.attn_implementation=flash_attention_2 needs the flash-attn package: "
                            "pip install flash-attn --no-build-isolation, or use model.attn_implementation=sdpa")


def load_model(model_cfg, hw, *, kind: str = "causal", precision: str = "fp32", tokenizer=None):
    """Load for training. kind: causal | reward (sequence classification, 1 label). Applies freeze/LoRA/QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from medgpt import hardware

    _check_cuda_features(model_cfg, hw)
    path = resolve_path(model_cfg.path, model_cfg.tiny)
    base = adapter_base(path)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    if model_cfg.dtype != "auto":
        dtype = getattr(torch, model_cfg.dtype)
    kwargs = dict(dtype=dtype, trust_remote_code=model_cfg.trust_remote_code)
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    quant = hardware.quantization_config(hw, compute_dtype=dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": _local_device()}
    if model_cfg.rope_scaling:
        kwargs["rope_scaling"] = dict(model_cfg.rope_scaling)
    auto = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    if kind == "reward":
        kwargs["num_labels"] = 1
    try:
        model = auto.from_pretrained(base or path, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"model.path={model_cfg.path}: cannot load a model from {base or path} "
                        f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if base:
        model = _attach_adapter(model, path, merge=model_cfg.adapter_merge or hw.method not in ("lora", "dora"))
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=hw.gradient_checkpointing)
    if hw.method == "freeze":
        n = hardware.apply_freeze(model, hw)
        log.info("freeze: %d trainable parameters", n)
    lora = hardware.lora_config(hw, model_cfg.lora_target_modules,
                                task_type="SEQ_CLS" if kind == "reward" else "CAUSAL_LM")
    if lora is not None and not _is_peft(model):
        from peft import get_peft_model

        model = get_peft_model(model, lora)
    return model


def _local_device():
    import os

    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def _attach_adapter(model, adapter_path: str, merge: bool):
    """A previous run's adapter: merged into the base (then trained anew), or kept and trained further."""
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(adapter_path)
    if config.task_type == "CAUSAL_LM" and not hasattr(model, "prepare_inputs_for_generation"):
        # a policy's adapter under a reward model (SFT -> RM): merge it into the shared body, the head starts anew
        config.task_type, merge = None, True
    model = PeftModel.from_pretrained(model, adapter_path, config=config, is_trainable=not merge)
    if merge:
        model = model.merge_and_unload()
    log.info("adapter %s: %s", adapter_path, "merged into its base" if merge else "kept and trained further")
    return model


def set_generation_defaults(model, tokenizer, template: str) -> None:
    """Generation stops on the template's end-of-turn token (and the tokenizer's EOS)."""
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn(template))
    config = model.generation_config
    stop = [eot_id] + [i for i in ([config.eos_token_id] if isinstance(config.eos_token_id, int)
                                   else (config.eos_token_id or [])) if i != eot_id]
    config.eos_token_id = stop if len(stop) > 1 else stop[0]
    config.pad_token_id = tokenizer.pad_token_id


def load_for_inference(path: str, *, device_map=None, dtype=None, quantization: Optional[str] = None):
    """Load a run folder / final/ / hub id for generation: full weights or adapter on its base, saved template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_path(path)
    info = run_info(path)
    base = adapter_base(path)
    trust = bool(info.get("trust_remote_code", False))
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    kwargs = dict(dtype=dtype or (torch.bfloat16 if torch.cuda.is_available() else torch.float32),
                  trust_remote_code=trust)
    if device_map:
        kwargs["device_map"] = device_map
    if quantization:
        from medgpt.hardware import quantization_config
        from types import SimpleNamespace

        kwargs["quantization_config"] = quantization_config(SimpleNamespace(quantization=quantization),
                                                            compute_dtype=kwargs["dtype"])
    model = AutoModelForCausalLM.from_pretrained(base or path, **kwargs)
    if base:
        from peft import PeftModel

        if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, path)
    model.eval()
    return model, tokenizer, info
