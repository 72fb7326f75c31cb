"""Every conf/model/<name>.yaml composes (offline, no download) into a valid model config with a real template;
LoRA target names exist in the families transformers implements natively."""
import functools
import socket

import pytest

from conftest import CONF, compose
from medgpt.modeling.templates import END_OF_TURN, available

MODEL_FILES = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
FAMILY_FILES = sorted(p.stem for p in (CONF / "model" / "family").glob("*.yaml"))
# Families whose modeling code is not in transformers: they need trust_remote_code, the others must not have it.
REMOTE_CODE = {"baichuan", "baichuan2", "chatglm", "chatglm2", "chatglm3", "internlm", "internlm2", "qwen", "xverse",
               "orion"}
# Families transformers implements: their LoRA targets are checked against a randomly initialised miniature.
NATIVE = {"bloom": "bloom", "llama": "llama", "llama2": "llama", "llama3": "llama", "yi": "llama", "deepseek": "llama",
          "mistral": "mistral", "mixtral": "mixtral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
          "cohere": "cohere"}


@functools.lru_cache(maxsize=None)
def composed(name: str):
    """Each file is composed once per session (composing costs ~1 s here)."""
    return compose(f"model={name}").model


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("composing a model config must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_model_config_composes(name, no_network):
    model = composed(name)  # first composed here (this test runs first), under the no-network guard
    assert model.name == name
    assert model.template in available() and model.template in END_OF_TURN
    assert model.path and model.max_length > 0
    if name != "tiny":
        assert model.family in FAMILY_FILES
        assert model.trust_remote_code == (model.family in REMOTE_CODE)
        assert isinstance(model.lora_target_modules, str) or len(model.lora_target_modules) > 0


def test_every_family_base_is_used_and_overridable():
    used = {composed(name).family for name in MODEL_FILES}
    assert set(FAMILY_FILES) <= used
    model = compose("model=qwen3-8b", "model.template=qwen3_nothink", "model.max_length=1024").model
    assert (model.template, model.max_length, model.family) == ("qwen3_nothink", 1024, "qwen3")


@pytest.mark.parametrize("family", sorted(NATIVE))
def test_lora_targets_exist_in_native_families(family):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    name = next(n for n in MODEL_FILES if n != "tiny" and composed(n).family == family)
    targets = composed(name).lora_target_modules
    config = AutoConfig.for_model(NATIVE[family], hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, vocab_size=64, head_dim=16)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    leaf_names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(targets) <= leaf_names, f"{family}: {set(targets) - leaf_names} are not Linear layers"
