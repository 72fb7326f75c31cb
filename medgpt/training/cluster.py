"""Clusters: SLURM through hydra-submitit-launcher (conf/hydra/launcher/slurm.yaml). Inside a job of N tasks each
task becomes one torch.distributed rank; `medgpt cluster` prints the sbatch file a sweep would submit.

    medgpt cluster hydra/launcher=slurm hydra.launcher.nodes=2 hydra.launcher.partition=gpu
    python train.py -m hydra/launcher=slurm hydra.launcher.nodes=2 hydra.launcher.partition=gpu hardware=full
Multi-node without SLURM: scripts/multinode_torchrun.sh.
"""
from __future__ import annotations

import os
import socket
import sys
from typing import List, Optional

from medgpt import compat
from medgpt.config import compose
from medgpt.errors import command


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for a single-machine rendezvous (and servers in tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_submitit_ranks() -> bool:
    """In a submitit task of a multi-task job: export RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT (what torchrun
    would set) so the trainer runs one rank per task. Returns whether it did."""
    if "RANK" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return False
    import submitit
    from submitit.helpers import TorchDistributedEnvironment

    if submitit.JobEnvironment().num_tasks <= 1:
        return False
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # LOCAL_RANK picks the GPU
    return True


def slurm_executor(launcher_cfg, folder: str):
    """The submitit executor exactly as hydra-submitit-launcher builds it from hydra.launcher."""
    from unittest import mock

    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(launcher_cfg, resolve=True)
    params.pop("_target_", None)
    params.pop("submitit_folder", None)
    # submitit refuses to build a SLURM executor where srun is missing; a preview off the cluster needs none
    with mock.patch.object(submitit.SlurmExecutor, "affinity", return_value=1):
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                         slurm_max_num_timeout=params.pop("max_num_timeout", 0))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor


def sbatch_text(launcher_cfg, folder: str) -> str:
    """The sbatch file hydra/launcher=slurm submits for one job (nothing is submitted)."""
    return compat.sbatch_text(slurm_executor(launcher_cfg, folder))  # submitit has no public preview


def compose_launcher(overrides: List[str]):

    overrides = list(overrides)
    if not any(o.startswith("hydra/launcher=") for o in overrides):
        overrides.append("hydra/launcher=slurm")
    return compose(overrides + ["hydra.job.name=train"], return_hydra_config=True).hydra.launcher


@command
def main(argv: Optional[List[str]] = None) -> int:
    compat.check("submitit")  # before composing: a submitit without the preview API fails in one line
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(o in ("-h", "--help") for o in overrides):
        print("usage: medgpt cluster [overrides of python train.py]    (prints the sbatch file of "
              "hydra/launcher=slurm; submits nothing)")
        return 0
    launcher = compose_launcher(overrides)
    print(sbatch_text(launcher, folder=launcher.submitit_folder))
    return 0
