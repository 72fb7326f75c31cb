"""Hardware group: every hardware x deepspeed config composes; pure functions (LoRA/bnb/DeepSpeed/freeze);
refusals before loading; full/freeze/LoRA/DoRA/QLoRA train on CPU; extended vocabularies; merge/export."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import CONF, compose, train_in_process
from medgpt.config import resolve
from medgpt.modeling import hardware
from medgpt.errors import UserError

HARDWARE = sorted(p.stem for p in (CONF / "hardware").glob("*.yaml"))
DEEPSPEED = sorted(p.stem for p in (CONF / "hardware" / "deepspeed").glob("*.yaml"))
CPU = {"cuda": False, "bf16": False}
GPU = {"cuda": True, "bf16": True}
STEPS = ("stage.args.max_steps=2", "data.max_samples=16", "data.eval_split=0", "hardware.precision=fp32")


def test_every_hardware_and_deepspeed_config_composes():
    """Each hardware file, each deepspeed file (with full), and the deepspeed x quantization corners."""
    assert {"cpu", "full", "freeze", "lora", "dora", "qlora4", "qlora8"} <= set(HARDWARE)
    assert DEEPSPEED == ["zero0", "zero1", "zero2", "zero3", "zero3_offload"]
    pairs = [(hw, None) for hw in HARDWARE] + [("full", ds) for ds in DEEPSPEED]
    pairs += [("qlora4", "zero2"), ("lora", "zero3"), ("qlora4", "zero3"), ("qlora8", "zero3_offload")]
    for hw, ds in pairs:
        cfg = compose(f"hardware={hw}", *([f"hardware/deepspeed={ds}"] if ds else []))
        assert cfg.hardware.name == hw
        if ds is None:
            assert cfg.hardware.deepspeed is None
            hardware.check_hardware(cfg, GPU)
            continue
        assert cfg.hardware.deepspeed.name == ds  # lands in hardware.deepspeed, next to the chosen hardware
        if hardware.zero_stage(cfg.hardware.deepspeed) == 3 and cfg.hardware.quantization:
            with pytest.raises(UserError, match="ZeRO-3 is not supported.*zero2"):
                hardware.check_hardware(cfg, GPU)
        else:
            hardware.check_hardware(cfg, GPU)


def test_deepspeed_dict_leaves_batch_sizes_to_the_trainer():
    cfg = compose("hardware=full", "hardware/deepspeed=zero3_offload")
    ds = hardware.deepspeed_config(cfg.hardware.deepspeed, "bf16")
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert ds[key] == "auto"
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert "name" not in ds
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    json.dumps(ds)  # plain data: written to the run folder as deepspeed.json
    assert hardware.deepspeed_config(compose("hardware/deepspeed=zero1").hardware.deepspeed, "fp32")["bf16"] == \
        {"enabled": False}
    assert hardware.deepspeed_config(None, "bf16") is None


def test_qlora_with_zero3_fails_before_data_or_model(tmp_path):
    with pytest.raises(UserError, match="quantization=4bit.*ZeRO-3"):
        train_in_process(tmp_path, "hardware=qlora4", "hardware/deepspeed=zero3", "data.train_files=[/nonexistent]")


def test_flash_attention_errors_say_what_to_install():
    hardware.check_attention("sdpa", CPU)
    with pytest.raises(UserError, match="needs a CUDA GPU.*sdpa"):
        hardware.check_attention("flash_attention_2", CPU)
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(UserError, match="pip install flash-attn"):
            hardware.check_attention("flash_attention_2", GPU)
    with pytest.raises(UserError, match="use one of"):
        hardware.check_attention("flash", CPU)


def precision_args(device, precision="auto"):
    """The precision trainer args of a run (medgpt.config.resolve) on this device."""
    args = resolve(compose(f"hardware.precision={precision}"), device).trainer_args()
    return {k: args[k] for k in ("bf16", "fp16", "use_cpu")}


def test_precision_and_method_checks():
    assert precision_args(CPU) == {"bf16": False, "fp16": False, "use_cpu": True}
    assert precision_args(GPU)["bf16"] is True
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        precision_args(CPU, "bf16")
    with pytest.raises(UserError, match="set hardware.method=lora"):
        hardware.check_method(compose("hardware=full", "hardware.quantization=4bit").hardware)


def test_bitsandbytes_and_lora_configs():
    q4 = hardware.quantization_config(compose("hardware=qlora4").hardware, compute_dtype=torch.bfloat16)
    assert q4.load_in_4bit and q4.bnb_4bit_quant_type == "nf4" and q4.bnb_4bit_use_double_quant
    assert q4.bnb_4bit_compute_dtype == torch.bfloat16
    assert hardware.quantization_config(compose("hardware=qlora8").hardware).load_in_8bit
    assert hardware.quantization_config(compose("hardware=lora").hardware) is None

    lora = hardware.lora_config(compose("hardware=lora", "hardware.lora_r=4").hardware, ["q_proj", "v_proj"])
    assert lora.r == 4 and lora.target_modules == {"q_proj", "v_proj"} and not lora.use_dora
    assert lora.modules_to_save is None
    cfg = compose("hardware=dora", "hardware.lora_target_modules=[o_proj]", "hardware.modules_to_save=[lm_head]")
    own = hardware.lora_config(cfg.hardware, resolve(cfg, CPU).lora_target_modules,
                               embedding_modules=["embed_tokens", "lm_head"])
    assert own.use_dora and own.target_modules == {"o_proj"}
    assert own.modules_to_save == ["lm_head", "embed_tokens"]
    assert hardware.lora_config(compose("hardware=full").hardware, "all-linear") is None


def test_freeze_keeps_last_layers_and_named_modules():
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)] + ["model.norm.weight", "lm_head.weight"]
    assert hardware.trainable_by_freeze(names, 4, 2, ["lm_head"]) == names[2:4] + ["lm_head.weight"]
    assert hardware.trainable_by_freeze(names, 4, 0, []) == []


@pytest.mark.parametrize("hw, extra", [
    ("cpu", ()),
    ("freeze", ("hardware.freeze_trainable_layers=1",)),
    ("lora", ()),
    ("dora", ("hardware.gradient_checkpointing=true",)),
])
def test_methods_train_on_cpu(tmp_path, tiny_dir, hw, extra):
    from safetensors.torch import load_file

    run_dir, metrics = train_in_process(tmp_path, f"hardware={hw}", *STEPS, *extra)
    assert metrics["status"] == "completed" and metrics["global_step"] == 2
    final = run_dir / "final"
    if hw in ("lora", "dora"):
        config = json.loads((final / "adapter_config.json").read_text())
        assert config["use_dora"] == (hw == "dora")
        keys = load_file(final / "adapter_model.safetensors").keys()
        assert any("lora_A" in k for k in keys)
        assert any("lora_magnitude_vector" in k for k in keys) == (hw == "dora")
        return
    before, after = load_file(tiny_dir / "model.safetensors"), load_file(final / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if hw == "freeze":  # only the last layer (of 2) moved
        assert changed and all(".layers.1." in k for k in changed)
    else:
        assert any(".layers.0." in k for k in changed) and any(".layers.1." in k for k in changed)


@pytest.fixture(scope="module")
def extended_tiny(tmp_path_factory, tiny_dir):
    """The tiny model with 3 added tokens in its tokenizer but not in its embeddings (an extended vocabulary)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("extended")
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    tokenizer.add_tokens(["<drug>", "<dose>", "<icd10>"])
    tokenizer.save_pretrained(out)
    AutoModelForCausalLM.from_pretrained(tiny_dir).save_pretrained(out)
    return out, len(tokenizer)


def _logits(model, ids):
    for module in model.modules():  # bitsandbytes' 4-bit layers: the fp32 path training took, not the bf16 one
        if hasattr(module, "support_avx512bf16_for_cpu"):  # it switches to for inference on AVX512-BF16 CPUs
            module.support_avx512bf16_for_cpu = False
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("hw", ["lora", "qlora4"])
def test_merge_matches_adapter_logits(tmp_path, extended_tiny, hw):
    """Merged weights compute what base + adapter computed. Tolerance: 1e-4 absolute on logits (fp32 sums in a
    different order); QLoRA compares against the 4-bit base + adapter the run trained."""
    from transformers import AutoModelForCausalLM

    from medgpt.tools.merge import merge
    from medgpt.modeling.load import load_for_inference

    path, vocab = extended_tiny
    run_dir, _ = train_in_process(tmp_path, f"hardware={hw}", f"model.path={path}", *STEPS,
                                  "stage.args.learning_rate=1e-2")
    final = run_dir / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert set(config["modules_to_save"]) >= {"embed_tokens", "lm_head"}  # extended rows trained and saved
    adapter_model, tokenizer, _ = load_for_inference(str(final), dtype=torch.float32,
                                                     quantization="4bit" if hw == "qlora4" else None)
    out = merge(str(run_dir), str(tmp_path / "merged"), dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert merged.get_input_embeddings().weight.shape[0] == vocab  # extended vocabulary kept
    assert json.loads((out / "medgpt.json").read_text())["dequantized_from"] == ("4bit" if hw == "qlora4" else None)
    ids = torch.tensor([tokenizer.encode("The patient takes <drug> at <dose> twice a day.")])
    assert ids.max() >= vocab - 3  # the input uses the new tokens
    expected, got = _logits(adapter_model, ids), _logits(merged, ids)
    assert got.shape[-1] == vocab
    # bitsandbytes' CPU 4-bit matmul runs in fp32 on some CPUs and in bf16 on others (its fused AVX512-BF16
    # kernels): measured 3e-7 here and 0.0031 on logits of ~1.2 elsewhere, i.e. bf16's 2^-8 relative rounding.
    atol = 1e-4 if hw == "lora" else 2 ** -7 * expected.abs().max().item()
    assert torch.allclose(got, expected, atol=atol, rtol=0), (got - expected).abs().max()
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # 3 rows fewer
    old_ids = ids[:, :4].clamp(max=vocab - 4)
    trained_effect = (_logits(base, old_ids) - _logits(merged, old_ids)[..., :vocab - 3]).abs().max().item()
    assert trained_effect > 10 * atol  # the adapter changed the logits far beyond the tolerance above


def test_merge_refuses_full_weights(sft_run, tmp_path):
    from medgpt.tools.merge import merge

    with pytest.raises(UserError, match="not a LoRA adapter"):
        merge(str(sft_run[0]), str(tmp_path / "m"))
