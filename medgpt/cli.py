"""The console command: every tool of medgpt as a subcommand (also `python -m medgpt <command>`).

    medgpt train stage=dpo model=qwen1.5-7b hardware=qlora4     # the same as python train.py ...
    medgpt chat outputs/runs/sft-tiny-cpu/<stamp>
    medgpt --help
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

import hydra

from medgpt.config import CONF_DIR, normalize_overrides, register_configs

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
