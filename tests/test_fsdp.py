"""FSDP2 beside DeepSpeed (issue 23 items 1-3): hardware/fsdp=<name> drives PyTorch FSDP2 through the Trainer's own
`fsdp` / `fsdp_config` (accelerate's FullyShardedDataParallelPlugin, version 2); impossible combinations are refused
before anything loads; QLoRA keeps its 4-bit weights in a float storage dtype so fully_shard can shard them.

On CPUs accelerate (1.15) does not run FSDP at all: a multi-process CPU run is MULTI_CPU, and accelerate drops the
FSDP plugin there and trains plain DDP. medgpt therefore refuses hardware/fsdp without a GPU, and the test
`test_accelerate_still_drops_fsdp_on_cpu` proves the reason on 2 CPU processes (it fails the day accelerate runs FSDP
on CPUs, so that the refusal can go and the 2-process CPU equality tests be written). The training runs themselves
are GPU tests (bench/gpu_check.sh fsdp).

    python -m pytest -q tests/test_fsdp.py
"""
from __future__ import annotations

import json
import os

import pytest

from conftest import compose, train_in_process
from medgpt.config import GPU_DEVICE, resolve
from medgpt.errors import UserError
from medgpt.modeling import estimate, hardware


def plugin_args(*overrides: str, checkpointing: bool = True) -> dict:
    """What the Trainer hands accelerate for this hardware (TrainingArguments.fsdp_plugin_args)."""
    from transformers import TrainingArguments

    cfg = compose(*overrides)
    config = hardware.fsdp_config(cfg.hardware.fsdp, checkpointing)
    args = TrainingArguments(output_dir="unused", fsdp=True, fsdp_config=config, use_cpu=True, report_to=[])
    return args.fsdp_plugin_args


def test_fsdp_group_becomes_accelerates_fsdp2_plugin():
    from accelerate.utils import FullyShardedDataParallelPlugin

    args = plugin_args("hardware=full", "hardware/fsdp=full_shard")
    assert args == {"fsdp_version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "cpu_ram_efficient_loading": False,
                    "state_dict_type": "FULL_STATE_DICT", "activation_checkpointing": True,
                    "reshard_after_forward": True}
    plugin = FullyShardedDataParallelPlugin(**args)  # accelerate accepts every key
    assert plugin.fsdp_version == 2 and plugin.activation_checkpointing and plugin.reshard_after_forward
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin_args("hardware=full", "hardware/fsdp=shard_grad_op")["reshard_after_forward"] is False
    assert plugin_args("hardware=full", "hardware/fsdp=full_shard_offload")["cpu_offload"] is True
    named = plugin_args("hardware=full", "hardware/fsdp=full_shard",
                        "hardware.fsdp.transformer_layer_cls_to_wrap=Qwen2DecoderLayer")
    assert named["transformer_cls_names_to_wrap"] == "Qwen2DecoderLayer"


def test_checkpointing_goes_to_fsdp_not_the_trainer():
    """transformers refuses FSDP's activation checkpointing together with the trainer's own (which would
    all-gather every layer twice): the resolved trainer args turn the trainer's off under FSDP."""
    fsdp = resolve(compose("hardware=lora", "hardware/fsdp=full_shard"), GPU_DEVICE)
    plain = resolve(compose("hardware=lora"), GPU_DEVICE)
    assert fsdp.gradient_checkpointing and plain.gradient_checkpointing
    assert fsdp.trainer_args()["gradient_checkpointing"] is False
    assert plain.trainer_args()["gradient_checkpointing"] is True


@pytest.mark.parametrize("overrides, message", [
    (("hardware=full", "hardware/fsdp=full_shard", "hardware/deepspeed=zero3"), "both shard the model"),
    (("hardware=qlora8", "hardware/fsdp=full_shard"), "int8 weights cannot be sharded"),
    (("hardware=full", "hardware/fsdp=full_shard", "hardware.fsdp.state_dict_type=SHARDED_STATE_DICT"),
     "keeps FULL_STATE_DICT"),
], ids=["with-deepspeed", "qlora8", "sharded-state-dict"])
def test_impossible_combinations_are_refused_in_one_line(monkeypatch, overrides, message):
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match=message) as e:
        hardware.check_hardware(compose(*overrides), {"cuda": True, "bf16": True})
    assert "\n" not in str(e.value)


def test_fsdp_needs_a_launcher_and_a_gpu(monkeypatch):
    cfg = compose("hardware=full", "hardware/fsdp=full_shard")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(UserError, match="launch with torchrun"):
        hardware.check_hardware(cfg, {"cuda": True, "bf16": True})
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match="silently train plain DDP"):
        hardware.check_hardware(cfg, {"cuda": False, "bf16": False})


def test_fsdp_on_cpu_is_refused_before_data_or_model(monkeypatch, tmp_path):
    import medgpt.training.run as run

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(run, "load_data", lambda *a, **k: pytest.fail("data loaded before the refusal"))
    monkeypatch.setattr(run, "load_model", lambda *a, **k: pytest.fail("model loaded before the refusal"))
    with pytest.raises(UserError, match="needs CUDA GPUs"):
        train_in_process(tmp_path, "hardware=full", "hardware/fsdp=full_shard")


def test_qlora_under_fsdp_stores_4bit_weights_as_floats(tiny_dir):
    """accelerate's FSDP2 shards a frozen Params4bit only when its storage dtype is a float (bf16 on a GPU);
    with bitsandbytes' default uint8 storage it leaves the 4-bit base replicated on every GPU. Runs on the CPU
    backend of bitsandbytes: the weights load as floating Params4bit and the model computes."""
    pytest.importorskip("bitsandbytes")
    import torch
    from transformers import AutoModelForCausalLM

    cfg = compose("hardware=qlora4", "hardware/fsdp=full_shard")
    assert hardware.quantization_config(compose("hardware=qlora4").hardware, torch.float32).bnb_4bit_quant_storage \
        == torch.uint8  # without FSDP: bitsandbytes' default
    quant = hardware.quantization_config(cfg.hardware, torch.float32)
    assert quant.bnb_4bit_quant_storage == torch.float32
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=quant, dtype=torch.float32,
                                                 device_map={"": "cpu"})
    quantized = [p for p in model.parameters() if type(p).__name__ == "Params4bit"]
    assert quantized and all(p.is_floating_point() for p in quantized)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_estimate_shards_every_term_under_fsdp():
    def est(*overrides):
        return estimate.estimate_run(compose("model.name=llama-7b", "hardware=full", *overrides), gpus=8, seq=1024,
                                     batch=1, precision="bf16")

    full = est("hardware/fsdp=full_shard")
    grad_op = est("hardware/fsdp=shard_grad_op")
    offload = est("hardware/fsdp=full_shard_offload")
    total = estimate.reference_shape("llama-7b").total
    assert full.terms["weights"] == pytest.approx(total * 4 / 8)  # fp32 master weights (accelerate's upcast) / 8
    assert full.terms["optimizer states"] == pytest.approx(total * 8 / 8)
    assert grad_op.terms["gathered weights (FSDP)"] == pytest.approx(total * 2)  # every layer gathered, bf16
    assert full.terms["gathered weights (FSDP)"] < total * 2 / 10  # two layers at a time
    assert offload.terms["weights"] == offload.terms["optimizer states"] == 0 and offload.cpu_bytes > 0


# ---- the reason CPUs are refused, measured: 2 CPU processes (gloo), spawned from this test process --------------
def _accelerator_rank(rank: int, port: int, results):
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from accelerate.state import AcceleratorState

        # a rank may carry single-process accelerate state (earlier tests built TrainingArguments in this process):
        # forget it, as accelerate's own tests do between cases (test-only use of its reset)
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))
        results[rank] = (str(accelerator.distributed_type), getattr(accelerator.state, "fsdp_plugin", None) is None,
                         accelerator.num_processes)  # the Trainer reads the plugin exactly so (is_fsdp_enabled)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_accelerate_still_drops_fsdp_on_cpu():
    from conftest import two_ranks

    results = two_ranks(_accelerator_rank)
    assert results[0] == results[1] == ("DistributedType.MULTI_CPU", True, 2), results


def _qlora_rank(rank: int, port: int, model_dir: str, results):
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        quant = hardware.quantization_config(compose("hardware=qlora4", "hardware/fsdp=full_shard").hardware,
                                             torch.float32)

        def qlora():
            model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=torch.float32,
                                                         device_map={"": "cpu"})
            torch.manual_seed(0)
            return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))

        plain, sharded = qlora(), qlora()
        quantized = {n for n, p in sharded.named_parameters() if type(p).__name__ == "Params4bit"}
        for layer in sharded.base_model.model.model.layers:  # what accelerate's auto-wrap does: each decoder layer
            fully_shard(layer)
        fully_shard(sharded)
        torch.manual_seed(rank)
        ids = torch.randint(0, 100, (2, 8))
        expected = plain(input_ids=ids, labels=ids).loss
        loss = sharded(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = [p.grad for n, p in sharded.named_parameters() if "lora_" in n]
        results[rank] = {"quantized": len(quantized),
                         "quantized_sharded": len({n for n, p in sharded.named_parameters()
                                                   if isinstance(p, DTensor)} & quantized),
                         "loss": float(loss.detach()), "unsharded_loss": float(expected.detach()),
                         "lora_grads_finite": all(g is not None and torch.isfinite(g.full_tensor()
                                                  if isinstance(g, DTensor) else g).all() for g in grads)}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_qlora4_base_shards_under_fully_shard_on_cpu(tiny_dir):
    """QLoRA under FSDP2 below the Trainer, on CPUs (what accelerate does on GPUs): 2 gloo ranks fully_shard a
    QLoRA-4 tiny model loaded with medgpt's quantization config. Every 4-bit weight becomes a DTensor shard, each
    rank's loss equals the unsharded model's exactly, LoRA gets finite gradients. (Measured: a forward *before*
    fully_shard breaks it: bitsandbytes then fails in fix_4bit_weight_quant_state_from_module; accelerate shards
    before any forward.)"""
    pytest.importorskip("bitsandbytes")
    from conftest import two_ranks

    results = two_ranks(_qlora_rank, str(tiny_dir))
    for rank in (0, 1):
        r = results[rank]
        assert r["quantized"] > 0 and r["quantized_sharded"] == r["quantized"], r
        assert r["loss"] == r["unsharded_loss"] and r["lora_grads_finite"], r


# ---- GPU only (skipped without CUDA): run by bench/gpu_check.sh fsdp ----------------------------------------------
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


GPU_STEPS = ("stage.args.max_steps=4", "stage.args.save_steps=2", "stage.args.logging_steps=1", "data.eval_split=0",
             "stage.args.per_device_train_batch_size=2", "logger=none", "stage.batching=random")


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("overrides", [
    ("hardware=full",), ("hardware=lora",), ("hardware=qlora4",), ("stage=dpo", "hardware=full"),
    ("stage=dpo", "hardware=lora"),
], ids=["sft-full", "sft-lora", "sft-qlora4", "dpo-full", "dpo-lora"])
def test_gpu_fsdp_trains_and_final_loads_without_torch_distributed(tmp_path, overrides):
    """One process per visible GPU (torchrun), FSDP2 full_shard: completes, finite losses, one run folder, and a
    consolidated final/ that a fresh process loads and generates with."""
    import torch

    from medgpt.modeling.load import load_for_inference
    from test_scaleout import losses, torchrun

    nproc = max(1, min(2, torch.cuda.device_count()))
    run_dir = torchrun(tmp_path, *overrides, "hardware/fsdp=full_shard", *GPU_STEPS, nproc=nproc)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 4
    assert all(x == x for x in losses(run_dir))
    model, tokenizer, _ = load_for_inference(str(run_dir / "final"), device_map="cuda:0")
    ids = torch.tensor([tokenizer.encode("fever and cough")], device="cuda:0")
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4


KILL_DRIVER = """
import os, runpy, signal, sys
import transformers
step = transformers.Trainer.training_step
def dying(self, *args, **kwargs):  # the last rank dies in step 3, after checkpoint-2 is complete
    if self.state.global_step == 2 and os.environ.get("RANK") == str(int(os.environ["WORLD_SIZE"]) - 1):
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)
transformers.Trainer.training_step = dying
sys.argv = [{train!r}, *sys.argv[1:]]
runpy.run_path({train!r}, run_name="__main__")
"""


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_gpu_fsdp_killed_run_resumes_exactly_and_its_adapter_merges(tmp_path):
    """SIGKILL one rank of an FSDP2 LoRA run in step 3; resume=auto continues its folder from checkpoint-2 and the
    losses of steps 3-4 equal an uninterrupted run's (1e-4); `medgpt merge` then turns its final/ into a model."""
    import subprocess
    import sys

    import torch

    from conftest import ROOT, free_port
    from test_scaleout import torchrun

    nproc = max(1, min(2, torch.cuda.device_count()))
    overrides = ("hardware=lora", "hardware/fsdp=full_shard", *GPU_STEPS)
    reference = torchrun(tmp_path / "reference", *overrides, nproc=nproc)
    driver = tmp_path / "kill_driver.py"
    driver.write_text(KILL_DRIVER.format(train=str(ROOT / "train.py")))
    out = tmp_path / "crashed"
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([*launch, f"--master_port={free_port()}", str(driver), f"output_root={out}", *overrides],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode != 0
    resumed = torchrun(out, *overrides, "resume=auto", nproc=nproc)  # one run folder: the killed run's

    def by_step(run_dir):
        history = json.loads((run_dir / "history.json").read_text())["log_history"]
        return {h["step"]: h["loss"] for h in history if "loss" in h}

    assert [by_step(resumed)[s] for s in (3, 4)] == pytest.approx([by_step(reference)[s] for s in (3, 4)], abs=1e-4)
    merged = tmp_path / "merged"
    from medgpt.tools import merge

    assert merge.main([str(resumed / "final"), "--output", str(merged)]) == 0
    assert (merged / "model.safetensors").exists() or (merged / "model.safetensors.index.json").exists()
