"""Every YAML in conf/ composes (Hydra Compose API); typos and wrong types fail naming the key."""
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import CONF, compose
from medgpt.config import check_trainer_args
from medgpt.errors import UserError


def _override(path: Path) -> list:
    """The overrides that select this config file, for each folder of conf/."""
    group = path.parent.relative_to(CONF).as_posix()
    name = path.stem
    if group == "data":
        return [f"data={name}"]
    if group in ("model", "stage", "hardware", "logger"):
        return [f"{group}={name}"]
    if group == "hardware/deepspeed":
        return ["hardware=full", f"hardware/deepspeed={name}"]
    if group == "hardware/fsdp":
        return ["hardware=full", f"hardware/fsdp={name}"]
    if group == "model/family":  # a family base: composes alone (name/path stay missing until a model sets them)
        return [f"model=family/{name}"]
    if group == "hydra/launcher":
        return [f"hydra/launcher={name}"]
    if group == "sweep":
        return [f"+sweep={name}"]
    if group == "eval":  # benchmark suites
        return ["stage=eval", f"eval={name}"]
    if group == "benchmark":  # one benchmark, as a suite's defaults list adds it
        return ["stage=eval", f"+benchmark@eval.benchmarks.{name}={name}"]
    raise AssertionError(f"{path}: no test composes files in conf/{group}/; add the folder to _override")


CONFIG_FILES = sorted(p for p in CONF.rglob("*.yaml") if p.name != "train.yaml")


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.relative_to(CONF).as_posix())
def test_every_config_file_composes(path):
    cfg = compose(*_override(path), return_hydra_config=True)
    group = path.parent.relative_to(CONF).as_posix()
    if group in ("model", "stage", "data", "logger"):
        assert cfg[group].name == path.stem
    if group == "stage" and cfg.stage.kind == "train":  # eval has no trainer
        check_trainer_args(cfg)  # every stage's args are fields of its trainer config class


def test_default_composition_is_tiny_sft_on_cpu():
    cfg = compose()
    assert (cfg.model.name, cfg.stage.name, cfg.data.name, cfg.hardware.name) == ("tiny", "sft", "sft_demo", "cpu")
    assert Path(cfg.data.train_files[0]).exists()


def test_real_model_configs_compose_without_download():
    cfg = compose("stage=sft", "model=qwen1.5-7b", "hardware=qlora4")
    assert cfg.model.path == "Qwen/Qwen1.5-7B-Chat" and cfg.hardware.quantization == "4bit"
    assert cfg.model.trust_remote_code is False


def test_misspelt_key_fails_at_compose_naming_it():
    with pytest.raises(ConfigCompositionException, match="train_filez"):
        compose("data.train_filez=[a.jsonl]")


def test_wrong_type_fails_at_compose_naming_it():
    with pytest.raises((ConfigCompositionException, ValidationError), match="max_samples"):
        compose("data.max_samples=lots")


def test_trainer_args_are_any_field_of_the_trl_config_and_typos_fail():
    cfg = compose("stage.args.max_steps=2", "stage.args.weight_decay=0.1")
    assert cfg.stage.args.max_steps == 2
    check_trainer_args(cfg)
    bad = compose("stage.args.learning_rat=1")
    with pytest.raises(UserError, match=r"learning_rat \(did you mean learning_rate\?\)"):
        check_trainer_args(bad)


def test_cli_contract_fields_exist():
    cfg = compose("data.train_files=[a.jsonl,b/]", "data.eval_files=[c.jsonl]", "data.format=alpaca",
                  "data.max_samples=5", "data.eval_split=0.2", "data.hub_name=shibing624/medical",
                  "model.path=/tmp/x", "seed=7", "run_name=exp1", "output_root=/tmp/o")
    assert list(cfg.data.train_files) == ["a.jsonl", "b/"] and cfg.seed == 7 and cfg.run_name == "exp1"


@pytest.mark.parametrize("path", CONFIG_FILES + [CONF / "train.yaml"], ids=lambda p: p.relative_to(CONF).as_posix())
def test_every_config_file_opens_with_a_command_that_uses_it(path):
    lines = [line for line in path.read_text().splitlines() if not line.startswith("# @package")]
    assert lines[0].startswith("# ") and "python" in lines[0], f"{path}: first line should show a command"
