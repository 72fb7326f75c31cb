"""hardware configs -> the right peft / bitsandbytes / trainer settings (pure functions, no model)."""
import pytest
import torch

from conftest import compose
from medgpt.config import resolve
from medgpt.modeling import hardware
from medgpt.errors import UserError

CPU = {"cuda": False, "bf16": False}
GPU_BF16 = {"cuda": True, "bf16": True}


def test_qlora4_builds_nf4_double_quant():
    cfg = compose("hardware=qlora4")
    bnb = hardware.quantization_config(cfg.hardware, compute_dtype=torch.bfloat16)
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16


def test_qlora8_and_full_quantization():
    assert hardware.quantization_config(compose("hardware=qlora8").hardware).load_in_8bit
    assert hardware.quantization_config(compose("hardware=full").hardware) is None


def test_lora_targets_come_from_the_model_config_unless_hardware_sets_them():
    cfg = compose("hardware=lora", "model=qwen2.5-7b")
    lora = hardware.lora_config(cfg.hardware, resolve(cfg, CPU).lora_target_modules)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert lora.r == 8 and lora.lora_alpha == 16 and not lora.use_dora
    cfg = compose("hardware=lora", "hardware.lora_target_modules=[q_proj]", "hardware.lora_r=4")
    lora = hardware.lora_config(cfg.hardware, resolve(cfg, CPU).lora_target_modules)
    assert set(lora.target_modules) == {"q_proj"} and lora.r == 4
    assert hardware.lora_config(compose("hardware=cpu").hardware, "all-linear") is None


def precision_args(precision, device):
    """The precision trainer args of a run (medgpt.config.resolve) with this hardware.precision on this device."""
    args = resolve(compose(f"hardware.precision={precision}"), device).trainer_args()
    return {k: args[k] for k in ("bf16", "fp16", "use_cpu")}


def test_precision_follows_the_device():
    assert precision_args("auto", CPU) == {"bf16": False, "fp16": False, "use_cpu": True}
    assert precision_args("auto", GPU_BF16) == {"bf16": True, "fp16": False, "use_cpu": False}
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        precision_args("bf16", CPU)


def test_quantization_without_adapters_is_refused():
    cfg = compose("hardware=qlora4", "hardware.method=full")
    with pytest.raises(UserError, match="trains adapters only"):
        hardware.check_method(cfg.hardware)
