"""Every conf/model/<name>.yaml composes (offline, no download) into a valid model config with a real template;
LoRA target names exist in the families transformers implements natively."""
import functools
import re
import socket

import pytest

from conftest import CONF, compose
from medgpt.modeling.estimate import SHAPES, estimate_run, reference_shape
from medgpt.modeling.templates import END_OF_TURN, available

MODEL_FILES = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
FAMILY_FILES = sorted(p.stem for p in (CONF / "model" / "family").glob("*.yaml"))
# Families whose modeling code is not in transformers: they need trust_remote_code, the others must not have it.
REMOTE_CODE = {"baichuan", "baichuan2", "chatglm", "chatglm2", "chatglm3", "internlm", "internlm2", "qwen", "xverse",
               "orion", "internlm3"}
# Families transformers implements: their LoRA targets are checked against a randomly initialised miniature.
NATIVE = {"bloom": "bloom", "llama": "llama", "llama2": "llama", "llama3": "llama", "yi": "llama", "deepseek": "llama",
          "mistral": "mistral", "mixtral": "mixtral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
          "cohere": "cohere", "gemma3": "gemma3_text", "deepseek3": "deepseek_v3", "deepseek_r1_distill": "qwen2",
          "qwen3_5": "qwen3_5_text", "mistral_nemo": "mistral", "mistral_small": "mistral", "phi4": "phi3",
          "glm4": "glm4", "internlm3": "llama"}
# A miniature needs more than one layer where the first is not representative (Qwen3.5: 3 linear-attention layers,
# then a full-attention one).
MINIATURE = {"qwen3_5": {"num_hidden_layers": 4}, "phi4": {"pad_token_id": 0}, "glm4": {"pad_token_id": 0}}
# Published total sizes of models whose name carries none (the DeepSeek-V3 paper: 671B).
SIZES = {"deepseek-v3": 671e9, "deepseek-r1": 671e9}
# Model configs that predate the zoo refresh and have no estimator shape (their config.json is read from the HF cache).
NO_SHAPE = {"baichuan-13b", "baichuan2-13b", "baichuan2-7b", "bloomz-7b1", "chatglm-6b", "chatglm2-6b", "chatglm3-6b",
            "command-r-35b", "deepseek-7b", "gemma2-2b", "gemma2-9b", "internlm-7b", "internlm2-7b", "llama2-13b",
            "llama2-7b", "orion-14b", "qwen-7b", "qwen2.5-0.5b", "tiny", "vicuna-7b",
            "xverse-13b", "yi-34b", "yi-6b"}
# Shaped model configs that predate the zoo refresh (no licence note; listed in docs/models.md's first table).
LEGACY_SHAPED = {"llama-7b", "mixtral-8x7b", "llama3-8b", "qwen1.5-7b", "qwen2.5-7b", "qwen3-0.6b", "qwen3-8b",
                 "llama3.1-8b", "mistral-7b"}


@functools.lru_cache(maxsize=None)
def composed_run(name: str):
    """Each file is composed once per session (composing costs ~1 s here), with LoRA for the estimate."""
    return compose(f"model={name}", "hardware=lora")


def composed(name: str):
    return composed_run(name).model


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
    shape = {**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=2, vocab_size=64, head_dim=16), **MINIATURE.get(family, {})}
    config = AutoConfig.for_model(NATIVE[family], **shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    leaf_names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(targets) <= leaf_names, f"{family}: {set(targets) - leaf_names} are not Linear layers"


@pytest.mark.parametrize("name", sorted(set(MODEL_FILES) - NO_SHAPE))
def test_model_config_estimates_offline(name, no_network):
    """Every zoo model has its published shape in the estimator; the parameter count it gives matches the size in the
    model's name, and a LoRA estimate with the config's own targets runs without the hub."""
    assert name in SHAPES, f"add {name}'s shape (its config.json) to medgpt.modeling.estimate.SHAPES"
    if name not in LEGACY_SHAPED:
        assert composed(name).licence, f"conf/model/{name}.yaml: add a licence note"
    if name in SIZES:
        size = SIZES[name]
    else:
        experts, billions = re.findall(r"(?:(\d+)x)?(\d+(?:\.\d+)?)b", name)[-1]
        size = int(experts or 1) * float(billions) * 1e9
    total = reference_shape(name).total
    assert 0.75 * size <= total <= 1.3 * size, f"{name}: {total / 1e9:.2f}B parameters"
    est = estimate_run(composed_run(name), gpus=1, seq=1024, batch=1, precision="bf16")
    assert est.total > total * 2 * 0.9  # bf16 weights at least


def test_docs_models_table_lists_every_ready_config():
    """docs/models.md has one table row per zoo model, with its hub id, family, template and licence."""
    text = (CONF.parent / "docs" / "models.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines() if line.startswith("| `")}
    ready = [name for name in MODEL_FILES if composed(name).licence]
    assert len(ready) >= 30
    for name in ready:
        model = composed(name)
        assert name in rows, f"docs/models.md: no row for {name}"
        row = rows[name]
        assert model.path in row and f"`{model.template}`" in row and model.family in row, row
        assert model.licence and model.licence.split(" (")[0].split(";")[0] in row, row
