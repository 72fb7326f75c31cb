"""The console command: every tool of medgpt as a subcommand (also `python -m medgpt <command>`).

    medgpt train stage=dpo model=qwen1.5-7b hardware=qlora4     # the same as python train.py ...
    medgpt chat outputs/runs/sft-tiny-cpu/<stamp>
    medgpt --help
"""
from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path
from typing import List, Optional

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from medgpt import runs
from medgpt.config import (CONF_DIR, check_credentials, check_resume, normalize_overrides, redact, register_configs,
                           to_container)
from medgpt.errors import UserError

# command -> (module:function taking argv, what it does). Imported only when run: most load torch.
COMMANDS = {
    "train": ("medgpt.cli:train", "compose model x stage x data x hardware and train (= python train.py)"),
    "pipeline": ("medgpt.tools.pipeline:main", "run stages in a chain, each from the previous final/ (pt,sft,dpo)"),
    "sweep": ("medgpt.tools.sweep:main", "leaderboard table and plots of a sweep (= python sweep.py)"),
    "eval": ("medgpt.evaluation.compare:main", "compare evaluated runs side by side (eval compare <runs>)"),
    "data": ("medgpt.tools.inspect:main", "inspect a data config as a run would see it (data inspect <overrides>)"),
    "estimate": ("medgpt.modeling.estimate:main", "GPU memory of a run, term by term, downloading nothing"),
    "merge": ("medgpt.tools.merge:main", "merge a LoRA/QLoRA adapter into its base model"),
    "vocab": ("medgpt.modeling.vocab:main", "extend a tokenizer's vocabulary from a domain corpus"),
    "chat": ("medgpt.inference.chat:main", "chat with a run in the terminal, or answer a file of questions"),
    "serve": ("medgpt.inference.serve:main", "an OpenAI-compatible HTTP server for a run"),
    "demo": ("medgpt.inference.demo:main", "a Gradio web chat for a run"),
    "rag": ("medgpt.inference.rag:main", "answer from your documents with citations"),
    "cluster": ("medgpt.training.cluster:main", "print the sbatch script a SLURM sweep would submit"),
}


def usage() -> str:
    lines = ["usage: medgpt <command> [arguments]    (medgpt <command> --help for its own)", "", "commands:"]
    lines += [f"  {name:<10} {about}" for name, (_target, about) in COMMANDS.items()]
    return "\n".join(lines)


def _task(cfg):
    from medgpt.training.run import main as run  # torch, transformers, trl: only once a run starts

    return run(cfg)


def claim_run_folder(cfg: DictConfig, run_dir: Path) -> None:
    """Before anything is written to the run folder: a token in the config (stage.args.hub_token), a mistyped
    resume= and a fresh launch into a used folder are refused (runs.check_launch), so is a resume with another stage,
    model or hardware than the run's first launch (naming the differences); then the folder is locked for this
    process's life (runs.lock_run_folder)."""
    now = to_container(cfg)
    check_credentials(now)
    if not runs.is_main_process():  # the other ranks of a launch share the folder the main rank claims
        return
    runs.check_launch(run_dir, cfg.resume)
    saved = run_dir / runs.CONFIG
    if saved.exists():  # read only: a refused resume leaves the run as it was
        first = OmegaConf.to_container(OmegaConf.load(saved))
        check_resume(first, redact(now), run_dir)
    runs.lock_run_folder(run_dir)


class ClaimRunFolder(Callback):
    """Hydra callback (conf/train.yaml: hydra.callbacks.run_folder): runs before Hydra creates the run folder or
    writes its .hydra/ record (on_run_start; a multirun's job folders are new ones, locked by medgpt.training.run).
    A refusal prints one line and exits with status 2; a resume records its launch in .hydra/resume-N/."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        task = copy.deepcopy(config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        try:
            claim_run_folder(task, run_dir)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        with read_write(config.hydra), open_dict(config.hydra):  # one record of the launch: the main rank's
            config.hydra.output_subdir = runs.hydra_subdir(run_dir) if runs.is_main_process() else None

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        """Hydra has just written its record of the launch (.hydra/): credentials in it are redacted."""
        if config.hydra.output_subdir is not None:
            redact_files(Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir))


def redact_files(folder: Path) -> None:
    """Rewrite the YAML files of a folder with their credentials redacted (medgpt.config.redact)."""
    import yaml

    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        clean = redact(data)
        if clean != data:
            path.write_text(yaml.safe_dump(clean, sort_keys=False, allow_unicode=True), encoding="utf-8")


def train(argv: Optional[List[str]] = None) -> None:
    """The Hydra application of train.py: `--cfg job`, `-m` sweeps and launchers work as there."""
    register_configs()
    sys.argv = ["train.py", *normalize_overrides(list(sys.argv[1:] if argv is None else argv))]
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(_task)()


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function = COMMANDS[argv[0]][0].split(":")
    result = getattr(importlib.import_module(module), function)(argv[1:])
    return result if isinstance(result, int) else 0
