"""Pure functions: hardware config -> precision args, BitsAndBytesConfig, LoraConfig, DeepSpeed dict, freezing.

    python train.py hardware=qlora4 --cfg job      # see what a hardware choice composes to
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from medgpt.errors import UserError

METHODS = ("full", "freeze", "lora", "dora")


def device_info() -> Dict[str, bool]:
    import torch

    cuda = torch.cuda.is_available()
    return {"cuda": cuda, "bf16": cuda and torch.cuda.is_bf16_supported()}


def resolve_precision(precision: str, device: Dict[str, bool]) -> str:
    if precision == "auto":
        return "bf16" if device["bf16"] else ("fp16" if device["cuda"] else "fp32")
    if precision in ("bf16", "fp16") and not device["cuda"]:
        raise UserError(f"hardware.precision={precision} needs a CUDA GPU; none is visible. Use hardware=cpu "
                        f"(fp32) or hardware.precision=fp32")
    if precision not in ("fp32", "bf16", "fp16"):
        raise UserError(f"hardware.precision={precision}: use auto, fp32, bf16 or fp16")
    return precision


def precision_args(precision: str, device: Dict[str, bool]) -> Dict[str, Any]:
    """Trainer args for the resolved precision (TRL defaults bf16=True, which fails on a CPU)."""
    resolved = resolve_precision(precision, device)
    return {"bf16": resolved == "bf16", "fp16": resolved == "fp16", "use_cpu": not device["cuda"]}


def torch_dtype(precision: str, device: Dict[str, bool]):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        resolve_precision(precision, device)]


def check_method(hw) -> None:
    if hw.method not in METHODS:
        raise UserError(f"hardware.method={hw.method}: use one of {', '.join(METHODS)}")
    if hw.quantization not in (None, "4bit", "8bit"):
        raise UserError(f"hardware.quantization={hw.quantization}: use 4bit, 8bit or null")
    if hw.quantization and hw.method not in ("lora", "dora"):
        raise UserError(f"hardware.quantization={hw.quantization} trains adapters only: set hardware.method=lora "
                        f"(QLoRA) or drop the quantization")


def quantization_config(hw, compute_dtype=None):
    """BitsAndBytesConfig for QLoRA-4 (nf4, double quant) or 8-bit, else None."""
    if not hw.quantization:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if hw.quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def lora_config(hw, default_targets: Any, task_type: str = "CAUSAL_LM"):
    """LoraConfig (DoRA when method=dora), else None for full/freeze."""
    if hw.method not in ("lora", "dora"):
        return None
    from peft import LoraConfig

    targets = hw.lora_target_modules or default_targets or "all-linear"
    return LoraConfig(r=hw.lora_r, lora_alpha=hw.lora_alpha, lora_dropout=hw.lora_dropout,
                      target_modules=targets if isinstance(targets, str) else list(targets),
                      modules_to_save=list(hw.modules_to_save) if hw.modules_to_save else None,
                      use_dora=hw.method == "dora", task_type=task_type)


def trainable_by_freeze(param_names: List[str], num_layers: int, last_n: int, modules: List[str]) -> List[str]:
    """Names of the parameters that stay trainable under method=freeze: the last N decoder layers + named modules."""
    keep_layers = {str(i) for i in range(max(0, num_layers - last_n), num_layers)}
    keep = []
    for name in param_names:
        parts = name.split(".")
        in_layer = any(p == "layers" and i + 1 < len(parts) and parts[i + 1] in keep_layers
                       for i, p in enumerate(parts))
        if in_layer or any(m in name for m in modules):
            keep.append(name)
    return keep


def apply_freeze(model, hw) -> int:
    names = [n for n, _ in model.named_parameters()]
    keep = set(trainable_by_freeze(names, model.config.num_hidden_layers, hw.freeze_trainable_layers,
                                   list(hw.freeze_trainable_modules)))
    if not keep:
        raise UserError("hardware=freeze left no parameter trainable: raise hardware.freeze_trainable_layers or "
                        "name modules in hardware.freeze_trainable_modules")
    for name, param in model.named_parameters():
        param.requires_grad = name in keep
    return sum(p.numel() for n, p in model.named_parameters() if n in keep)


def deepspeed_config(ds: Optional[dict], precision: str) -> Optional[dict]:
    """The DeepSpeed dict for the trainer: batch sizes and accumulation stay "auto" so they always match it."""
    if not ds:
        return None
    config = {k: v for k, v in dict(ds).items() if k != "name"}
    config.update({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                   "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"})
    config["bf16"] = {"enabled": precision == "bf16"}
    config["fp16"] = {"enabled": precision == "fp16"}
    return config
