"""Scale-out: memory estimate vs MedicalGPT's VRAM table, run ids shared by ranks, SLURM submission, submitit_local,
and 2-process torchrun runs (SFT with DDP, SFT with DeepSpeed ZeRO-3, DPO) against 1-process runs."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, compose, free_port, run_cli, train_in_process
from medgpt.config import GPU_DEVICE, resolve
from medgpt.modeling import estimate
from medgpt.errors import UserError

TOLERANCE = 0.30  # the bound on |ours - table| / table


def test_estimate_reproduces_medicalgpt_vram_table():
    rows = estimate.table_rows()
    assert len(rows) == 20
    misses = [(m, n, table, round(ours, 1)) for m, n, table, ours in rows if abs(ours - table) / table > TOLERANCE]
    assert not misses, misses


def test_estimate_terms_follow_the_hardware():
    def total(*overrides, gpus=1, **kw):
        cfg = compose("model.name=llama-7b", *overrides)
        return estimate.estimate_run(cfg, gpus=gpus, seq=1024, batch=1, precision="bf16", **kw)

    full = total("hardware=full", "hardware/deepspeed=zero0", "hardware.gradient_checkpointing=false")
    assert set(full.terms) >= {"weights", "gradients", "optimizer states", "activations", "logits + loss"}
    assert full.terms["optimizer states"] == pytest.approx(6 * full.terms["weights"])  # 12 B vs 2 B per param
    ckpt = total("hardware=full", "hardware/deepspeed=zero0", "hardware.gradient_checkpointing=true")
    assert ckpt.terms["activations"] < full.terms["activations"] / 5
    z3 = total("hardware=full", "hardware/deepspeed=zero3", "hardware.gradient_checkpointing=false", gpus=8)
    for term in ("weights", "gradients", "optimizer states"):
        assert z3.terms[term] == pytest.approx(full.terms[term] / 8)
    z2 = total("hardware=full", "hardware/deepspeed=zero2", "hardware.gradient_checkpointing=false", gpus=8)
    assert z2.terms["weights"] == full.terms["weights"] and z2.terms["gradients"] == pytest.approx(
        full.terms["gradients"] / 8)
    offload = total("hardware=full", "hardware/deepspeed=zero3_offload", gpus=8)
    assert offload.terms["optimizer states"] == 0 and offload.cpu_bytes > 0
    q4, q8, lora = (total(f"hardware={h}").terms["weights"] for h in ("qlora4", "qlora8", "lora"))
    assert q4 < q8 < lora
    assert "weights" in full.report("x") and "total per GPU" in full.report("x")


def test_estimate_cli_reads_a_local_model_config(capsys, tiny_dir):
    assert estimate.main(["model=tiny", "hardware=lora", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    for term in ("weights", "gradients", "optimizer states", "activations", "total per GPU"):
        assert term in out
    assert "micro batch 2" in out


def test_warns_before_training_when_the_estimate_exceeds_the_gpu(monkeypatch, caplog):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 24e9}))
    def warn(*overrides):  # the run's settings on a bf16 GPU, micro batch 1
        cfg = compose(*overrides, "stage.args.per_device_train_batch_size=1")
        return estimate.warn_if_too_large(cfg, resolve(cfg, GPU_DEVICE))

    with caplog.at_level(logging.WARNING, logger="medgpt.modeling.estimate"):
        big = warn("model.name=llama-13b", "hardware=full")
        small = warn("model.name=llama-7b", "hardware=qlora4")
    assert big.total > 24e9 > small.total
    assert len([r for r in caplog.records if "exceeds the visible 24.0 GB" in r.getMessage()]) == 1


def test_ranks_of_one_launch_share_the_run_stamp(monkeypatch):
    from medgpt.runs import run_stamp

    for key in ("MEDGPT_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert run_stamp() == run_stamp() and run_stamp().endswith(f"_p{os.getppid()}")  # from the launcher process
    monkeypatch.setenv("WORLD_SIZE", "16")  # two nodes of 8: nothing local is shared
    with pytest.raises(UserError, match="--rdzv_id"):
        run_stamp()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "exp42")
    assert run_stamp() == "job-exp42"
    monkeypatch.setenv("MEDGPT_RUN_ID", "mine")
    assert run_stamp() == "mine"


def test_slurm_launcher_writes_a_correct_submission():
    from medgpt.training.cluster import compose_launcher, sbatch_text

    launcher = compose_launcher(["hydra/launcher=slurm", "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4",
                                 "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                                 "hydra.launcher.account=med"])
    text = sbatch_text(launcher, folder="/shared/sweep/.submitit/%j")
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --account=med",
                 "export SUBMITIT_EXECUTOR=slurm"):
        assert line in text, line
    assert "srun" in text and "/shared/sweep/.submitit/%j" in text


def test_submitit_ranks_are_exported_only_in_multi_task_jobs(monkeypatch):
    from medgpt.training.cluster import export_submitit_ranks

    monkeypatch.setattr(os, "environ", os.environ.copy())  # export writes variables that did not exist: undo them all
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert export_submitit_ranks() is False
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "4", "SLURM_PROCID": "3",
           "SLURM_LOCALID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[01-02]",
           "SLURM_STEP_NODELIST": "gpu[01-02]"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert export_submitit_ranks() is True
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")
    assert os.environ["MASTER_ADDR"] == "gpu01" and os.environ["LOCAL_WORLD_SIZE"] == "2"


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_job(tmp_path):
    result = run_cli("-m", "hydra/launcher=submitit_local", f"output_root={tmp_path}", "logger=none",
                     "stage.args.max_steps=2", "data.max_samples=16", "data.eval_split=0",
                     f"hydra.sweep.dir={tmp_path}/sweep")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 2
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))  # ran as a submitit job


# ---- two processes (torchrun, gloo) against one: same global batch, same losses, one run folder ----------------
# stage.batching=random: the sampler whose global batches are the same for 1 x 4 and 2 x 2 samples (token-budget
# batches are planned per device, so their global batches differ by design)
STEPS = ("stage.args.max_steps=3", "stage.args.logging_steps=1", "data.eval_split=0", "hardware.precision=fp32",
         "stage.batching=random")
LOSS_RTOL = 1e-3  # per logged step; measured: the 2-process and 1-process losses agree to ~1e-6 here


def torchrun(out: Path, *overrides: str, nproc: int = 2, timeout: int = 900):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", str(ROOT / "train.py"), f"output_root={out}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = [p for p in (out / "runs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # every rank agreed on one run folder
    return runs[0]


def losses(run_dir: Path):
    return [h["loss"] for h in json.loads((run_dir / "history.json").read_text())["log_history"] if "loss" in h]


def compare_with_one_process(tmp_path, run_dir, *overrides):
    """The 2-process run (per-device batch 2) against one process with per-device batch 4: same global batch."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["world_size"] == 2 and metrics["global_batch_size"] == 4
    one_dir, one = train_in_process(tmp_path / "one", *overrides, *STEPS, "stage.args.per_device_train_batch_size=4")
    assert one["global_batch_size"] == 4 and one["world_size"] == 1
    assert metrics["tokens_seen"] == one["tokens_seen"]  # the same samples were seen
    assert losses(run_dir) == pytest.approx(losses(one_dir), rel=LOSS_RTOL)
    return metrics


@pytest.mark.slow
def test_torchrun_two_processes_sft_matches_one_process(tmp_path):
    run_dir = torchrun(tmp_path / "two", "logger=wandb", *STEPS, "stage.args.per_device_train_batch_size=2")
    compare_with_one_process(tmp_path, run_dir)
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # one W&B run, from rank 0
    assert (run_dir / "final" / "model.safetensors").exists()


@pytest.mark.slow
def test_torchrun_two_processes_deepspeed_zero3_on_cpu(tmp_path):
    """ZeRO-3 over 2 CPU processes: DeepSpeed dict in the run folder, consolidated final/ that loads without it.
    First use compiles DeepSpeed's shm op (~2 min, cached in ~/.cache/torch_extensions)."""
    pytest.importorskip("deepspeed")
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run_dir = torchrun(tmp_path / "two", "logger=none", "hardware/deepspeed=zero3", *STEPS,
                       "stage.args.per_device_train_batch_size=2")
    ds = json.loads((run_dir / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["train_micro_batch_size_per_gpu"] == "auto"
    compare_with_one_process(tmp_path, run_dir)  # sharded training, same losses as one plain process
    weights = load_file(run_dir / "final" / "model.safetensors")
    assert all(t.numel() > 0 for t in weights.values())  # gathered 16-bit weights, not empty ZeRO-3 shards
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.slow
def test_torchrun_two_processes_dpo_matches_one_process(tmp_path):
    pytest.importorskip("medgpt.stages.dpo")
    run_dir = torchrun(tmp_path / "two", "stage=dpo", "logger=none", *STEPS,
                       "stage.args.per_device_train_batch_size=2")
    compare_with_one_process(tmp_path, run_dir, "stage=dpo")


# ---- GPU only (skipped without CUDA): run by bench/gpu_check_deepspeed.sh on a lent GPU -------------------------
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


GPU_STEPS = ("stage.args.max_steps=3", "stage.args.logging_steps=1", "data.eval_split=0",
             "stage.args.per_device_train_batch_size=2", "logger=none")


@pytest.mark.parametrize("overrides", [
    ("hardware=full", "hardware/deepspeed=zero3"),  # bf16 ZeRO-3, consolidated 16-bit save
    ("hardware=lora", "hardware/deepspeed=zero2"),
    ("hardware=qlora4", "hardware/deepspeed=zero2"),  # QLoRA's DeepSpeed route (ZeRO-3 is refused at check time)
], ids=["full-zero3", "lora-zero2", "qlora4-zero2"])
@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_gpu_deepspeed_trains_and_final_loads_without_it(tmp_path, overrides):
    import torch

    from medgpt.modeling.load import load_for_inference

    run_dir = torchrun(tmp_path, *overrides, *GPU_STEPS, nproc=1)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 3
    assert all(map(lambda x: x == x, losses(run_dir)))  # finite losses
    ds = json.loads((run_dir / "deepspeed.json").read_text())
    assert ds["bf16"]["enabled"] == torch.cuda.is_bf16_supported()
    model, tokenizer, _ = load_for_inference(str(run_dir / "final"), device_map="cuda:0")
    ids = torch.tensor([tokenizer.encode("fever and cough")], device="cuda:0")
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits.float()).all()
        generated = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 8  # the reloaded final/ generates


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_gpu_flash_attention_without_the_package_fails_clearly(tmp_path):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(UserError, match="pip install flash-attn"):
        train_in_process(tmp_path, "hardware=full", "model.attn_implementation=flash_attention_2", *GPU_STEPS)
