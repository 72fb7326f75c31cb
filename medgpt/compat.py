"""The private library APIs medgpt cannot avoid, in one place, each checked before it is used.

Everything else goes through public extension points (trainer callbacks, subclasses overriding public methods). A
library upgrade that drops one of these fails here with one line naming the library, its installed version and the
version medgpt was tested with, not with an AttributeError in the middle of a command.

    python -c "from medgpt import compat; compat.check('submitit')"     # what `medgpt cluster` runs first
"""
from __future__ import annotations

import importlib
import inspect
from importlib import metadata
from typing import Dict, Tuple

from medgpt.errors import UserError

# library -> {"module.Class": (private attributes medgpt uses)}, why it is needed, and the version it was tested with
PRIVATE: Dict[str, Dict[str, Tuple[str, ...]]] = {
    # `medgpt cluster` prints the sbatch file a sweep would submit. submitit renders that file only in a private
    # method, and its one public route (executor.submit) renders and submits in the same call.
    "submitit": {"submitit.SlurmExecutor": ("_make_submission_file_text", "_submitit_command_str"),
                 "submitit.AutoExecutor": ()},
}
WHY = {"submitit": "to preview the sbatch file (medgpt cluster)"}
TESTED = {"submitit": "1.5.4"}


def installed_version(library: str) -> str:
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def missing(library: str, what: str) -> UserError:
    """The one-line error for a private API the installed library lacks."""
    return UserError(f"{library} {installed_version(library)} has no {what}, which medgpt uses {WHY[library]}; "
                     f"install the version medgpt was tested with: pip install '{library}=={TESTED[library]}'")


def check(library: str) -> None:
    """Fail with one line unless every private API medgpt uses from `library` is there (run before using any)."""
    for path, names in PRIVATE[library].items():
        module_name, _, class_name = path.rpartition(".")
        try:
            owner = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            raise missing(library, path) from None
        for name in names:
            found = inspect.getattr_static(owner, name, None)
            if found is None or getattr(found, "__isabstractmethod__", False):  # an abstract base's is no use
                raise missing(library, f"{path}.{name}")


def sbatch_text(executor) -> str:
    """The sbatch file a submitit.AutoExecutor(cluster="slurm") would submit for one job; nothing is submitted."""
    check("submitit")
    slurm = getattr(executor, "_executor", None)  # the AutoExecutor's cluster-specific executor
    if slurm is None:
        raise missing("submitit", "AutoExecutor._executor")
    return slurm._make_submission_file_text(slurm._submitit_command_str, "preview")
