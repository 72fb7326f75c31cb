"""Pure functions: hardware config -> BitsAndBytesConfig, LoraConfig, DeepSpeed dict, FSDP2 config, freezing, and
the checks that refuse impossible combinations before any data or model is loaded. Precision, LoRA targets and
gradient checkpointing are resolved with the other run settings (medgpt.config.resolve, from the device detected
here; hardware=auto plans from the machine described here, medgpt.modeling.estimate.plan).

    python train.py hardware=qlora4 --cfg job                          # see what a hardware choice composes to
    python train.py hardware=full hardware/deepspeed=zero3 --cfg job   # ... with a DeepSpeed stage
    python train.py hardware=full hardware/fsdp=full_shard --cfg job   # ... with PyTorch FSDP2
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from medgpt.errors import UserError

METHODS = ("full", "freeze", "lora", "dora")


def device_info() -> Dict[str, Any]:
    """The visible machine: cuda, bf16, gpus (count), memory_gb (the smallest visible GPU's memory, else the
    machine's RAM), ram_gb. hardware=auto plans for it unless hardware.auto.gpus / memory_gb describe another
    machine."""
    import torch

    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    if gpus:
        memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(gpus))
    else:
        memory = ram_bytes()
    return {"cuda": cuda, "bf16": cuda and torch.cuda.is_bf16_supported(), "gpus": gpus, "memory_gb": memory / 1e9,
            "ram_gb": ram_bytes() / 1e9}


def ram_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0.0


def check_method(hw) -> None:
    if hw.method not in METHODS:
        raise UserError(f"hardware.method={hw.method}: use one of {', '.join(METHODS)}")
    if hw.quantization not in (None, "4bit", "8bit"):
        raise UserError(f"hardware.quantization={hw.quantization}: use 4bit, 8bit or null")
    if hw.quantization and hw.method not in ("lora", "dora"):
        raise UserError(f"hardware.quantization={hw.quantization} trains adapters only: set hardware.method=lora "
                        f"(QLoRA) or drop the quantization")


ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention",
             "medgpt_varlen",  # varlen flash attention over packed rows (medgpt.modeling.attention), CUDA only
             "s2attn")  # LongLoRA shifted sparse attention, training only (medgpt.modeling.longcontext)


def check_attention(attn_implementation: Optional[str], device: Dict[str, bool]) -> None:
    """flash-attention needs a CUDA GPU and the flash-attn package: say so before anything is loaded."""
    import importlib.util

    if attn_implementation is None:
        return
    if attn_implementation not in ATTENTION:
        raise UserError(f"model.attn_implementation={attn_implementation}: use one of {', '.join(ATTENTION)} "
                        f"or null (the library default)")
    if attn_implementation == "medgpt_varlen" and not device["cuda"]:
        raise UserError("model.attn_implementation=medgpt_varlen needs a CUDA GPU; none is visible. Use sdpa")
    if attn_implementation.startswith("flash_attention"):
        if not device["cuda"]:
            raise UserError(f"model.attn_implementation={attn_implementation} needs a CUDA GPU; none is visible. "
                            f"Use model.attn_implementation=sdpa (or eager), e.g. with hardware=cpu")
        package = "flash_attn" if attn_implementation == "flash_attention_2" else "flash_attn_interface"
        if importlib.util.find_spec(package) is None:
            raise UserError(f"model.attn_implementation={attn_implementation} needs the {package} package, which is "
                            f"not installed: pip install flash-attn --no-build-isolation, or use "
                            f"model.attn_implementation=sdpa")


def zero_stage(ds: Optional[dict]) -> Optional[int]:
    if not ds:
        return None
    return int(dict(ds).get("zero_optimization", {}).get("stage", 0))


def check_deepspeed(hw) -> None:
    """Combinations DeepSpeed cannot run, refused with the reason (at check time, before data and model)."""
    stage = zero_stage(hw.deepspeed)
    if stage is None:
        return
    if stage not in (0, 1, 2, 3):
        raise UserError(f"hardware.deepspeed.zero_optimization.stage={stage}: use 0, 1, 2 or 3")
    if stage == 3 and hw.quantization:
        raise UserError(
            f"hardware={hw.name} (quantization={hw.quantization}) with DeepSpeed ZeRO-3 is not supported: "
            f"transformers loads bitsandbytes-quantized models without ZeRO-3 partitioning, so every GPU would "
            f"hold the whole quantized base and the quantized weights cannot be sharded. Use "
            f"hardware/deepspeed=zero2 with QLoRA (shards the adapter's gradients and optimizer states), or "
            f"hardware=lora hardware/deepspeed=zero3 (16-bit base, sharded)")


def check_fsdp(hw, launched: bool, cuda: bool = False) -> None:
    """Combinations FSDP2 cannot run, refused with a one-line reason (at check time, before data and model)."""
    if not hw.get("fsdp"):
        return
    fsdp = hw.fsdp
    if hw.deepspeed:
        raise UserError(f"hardware/fsdp={fsdp.name} together with hardware/deepspeed={hw.deepspeed.get('name')}: "
                        f"both shard the model, a run uses one engine. Drop one of them")
    if hw.quantization == "8bit":
        raise UserError(f"hardware={hw.name} (8-bit base) with FSDP2 is not supported: bitsandbytes' int8 weights "
                        f"cannot be sharded by fully_shard. Use hardware=qlora4 (4-bit, sharded) or "
                        f"hardware/deepspeed=zero2 with 8-bit")
    if fsdp.get("state_dict_type", "FULL_STATE_DICT") != "FULL_STATE_DICT":
        raise UserError(f"hardware.fsdp.state_dict_type={fsdp.state_dict_type}: medgpt keeps FULL_STATE_DICT, so "
                        f"final/ is one safetensors model that loads without torch.distributed")
    if not cuda:
        raise UserError(f"hardware/fsdp={fsdp.name} needs CUDA GPUs: accelerate {_version('accelerate')} runs FSDP "
                        f"only on GPUs (on CPUs it would silently train plain DDP). Drop hardware/fsdp on a CPU "
                        f"(torchrun still splits the batch), or use hardware/deepspeed=zero3, which shards on CPUs")
    if not launched:
        raise UserError(f"hardware/fsdp={fsdp.name} shards over processes: launch with torchrun "
                        f"(torchrun --nproc_per_node <gpus> train.py ...; 1 process is allowed under torchrun)")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def check_hardware(cfg, device: Optional[Dict[str, Any]] = None) -> None:
    """Every hardware check that needs no model: method, quantization, attention, DeepSpeed, FSDP (precision:
    resolve)."""
    device = device or device_info()
    check_method(cfg.hardware)
    check_attention(cfg.model.attn_implementation, device)
    check_deepspeed(cfg.hardware)
    check_fsdp(cfg.hardware, "LOCAL_RANK" in os.environ, bool(device["cuda"]))


def quantization_config(hw, compute_dtype=None):
    """BitsAndBytesConfig for QLoRA-4 (nf4, double quant) or 8-bit, else None. Under FSDP2 the 4-bit weights are
    stored in the compute dtype (bnb_4bit_quant_storage), so fully_shard can shard them like any float tensor."""
    if not hw.quantization:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if hw.quantization == "4bit":
        storage = {"bnb_4bit_quant_storage": compute_dtype or torch.bfloat16} if getattr(hw, "fsdp", None) else {}
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16, **storage)
    return BitsAndBytesConfig(load_in_8bit=True)


def lora_config(hw, targets: Any, task_type: str = "CAUSAL_LM", embedding_modules: List[str] = ()):
    """LoraConfig (DoRA when method=dora), else None for full/freeze. targets: RunSettings.lora_target_modules.
    embedding_modules: the input/output embedding names when the vocabulary was extended; their new rows must
    train and be saved with the adapter."""
    if hw.method not in ("lora", "dora"):
        return None
    from peft import LoraConfig

    to_save = list(hw.modules_to_save or [])
    to_save += [m for m in embedding_modules if m not in to_save]
    return LoraConfig(r=hw.lora_r, lora_alpha=hw.lora_alpha, lora_dropout=hw.lora_dropout,
                      target_modules=targets if isinstance(targets, str) else list(targets),
                      modules_to_save=to_save or None, use_dora=hw.method == "dora", task_type=task_type)


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
    """The DeepSpeed dict for the trainer: batch sizes, accumulation and clipping stay "auto" so the trainer fills
    them from its own args and they can never disagree; precision follows the resolved hardware precision.
    ZeRO-3 gathers 16-bit weights on save, so final/ loads without DeepSpeed."""
    if not ds:
        return None
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(ds, resolve=True) if OmegaConf.is_config(ds) else __import__("copy").deepcopy(ds)
    config.pop("name", None)
    config.update({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                   "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"})
    config["bf16"] = {"enabled": precision == "bf16"}
    config["fp16"] = {"enabled": precision == "fp16"}
    zero = config.setdefault("zero_optimization", {"stage": 0})
    if zero.get("stage") == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return config


def fsdp_config(fsdp: Optional[dict], activation_checkpointing: bool) -> Optional[dict]:
    """The Trainer's `fsdp_config` for FSDP2 through accelerate (transformers 5.24's keys: version 2,
    reshard_after_forward, cpu_offload, auto_wrap_policy with transformer_layer_cls_to_wrap, activation_checkpointing,
    state_dict_type), or None. transformer_layer_cls_to_wrap null: the model's _no_split_modules (its decoder layer
    class). FULL_STATE_DICT: checkpoints (model + optimizer, so a run resumes) and final/ hold one consolidated
    safetensors model or adapter that loads without torch.distributed. Activation checkpointing goes to FSDP's own
    (the trainer's gradient checkpointing under FSDP all-gathers twice; transformers refuses both at once)."""
    if not fsdp:
        return None
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(fsdp, resolve=True) if OmegaConf.is_config(fsdp) else dict(fsdp)
    config = {"version": 2, "reshard_after_forward": bool(node.get("reshard_after_forward", True)),
              "cpu_offload": bool(node.get("cpu_offload", False)),
              "auto_wrap_policy": node.get("auto_wrap_policy") or "TRANSFORMER_BASED_WRAP",
              "state_dict_type": node.get("state_dict_type") or "FULL_STATE_DICT",
              "activation_checkpointing": bool(activation_checkpointing)}
    if node.get("transformer_layer_cls_to_wrap"):
        layers = node["transformer_layer_cls_to_wrap"]
        config["transformer_layer_cls_to_wrap"] = [layers] if isinstance(layers, str) else list(layers)
    return config
