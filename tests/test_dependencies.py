"""The installed versions agree with setup.cfg's ranges and with constraints.txt, the pins CI tests.

    pytest tests/test_dependencies.py
"""
from __future__ import annotations

import configparser
import re
from importlib.metadata import PackageNotFoundError, version

import pytest
from packaging.requirements import Requirement

from conftest import ROOT


def requirements():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [Requirement(line) for line in cfg["options"]["install_requires"].split("\n") if line.strip()]


def pins():
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, pinned = line.split("==")
            found[re.sub(r"[-_.]+", "-", name.lower())] = pinned
    return found


def test_floors_match_what_the_code_needs():
    spec = {r.name: r.specifier for r in requirements()}
    assert "2.5.1" not in spec["torch"] and "2.6.0" in spec["torch"]  # weights_only trainer-state loading
    for name, next_major in (("transformers", "6.0.0"), ("trl", "2.0.0")):
        assert next_major not in spec[name], f"{name} must be capped below its next major version"


def test_constraints_pin_every_requirement_within_its_range():
    pinned = pins()
    for requirement in requirements():
        key = re.sub(r"[-_.]+", "-", requirement.name.lower())
        if key == "torch":
            continue  # installed first, on its own line of the README (CPU or CUDA build)
        assert key in pinned, f"constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pinned[key], prereleases=True), (requirement, pinned[key])


@pytest.mark.parametrize("name", ["transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes"])
def test_installed_versions_are_the_tested_ones(name):
    try:
        installed = version(name)
    except PackageNotFoundError:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' -c constraints.txt")
    assert installed == pins()[re.sub(r"[-_.]+", "-", name.lower())], \
        f"{name} {installed} is not the version constraints.txt pins: pip install -e '.[dev]' -c constraints.txt"
