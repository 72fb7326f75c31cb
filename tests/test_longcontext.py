"""Long context on the tiny model: RoPE scaling (factor from model.max_length), S²-Attn (exact grouped/shifted
attention in training, plain sdpa at inference), NEFTune (noise on training-time embeddings only)."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose
from medgpt.config import resolve
from medgpt.errors import UserError
from medgpt.modeling.longcontext import rope_settings, shifted_sparse_attention
from medgpt.modeling.load import load_model, load_tokenizer

BASE = {"rope_theta": 10000.0, "rope_type": "default"}
CPU = {"cuda": False, "bf16": False}


def settings(cfg):
    """The run's settings (medgpt.config.resolve), as on a CPU: fp32."""
    return resolve(cfg, CPU)


def test_rope_factor_from_max_length():
    linear = rope_settings({"type": "linear", "factor": "auto"}, 10000, BASE, 4096)
    assert linear == {"rope_parameters": {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.45},
                      "max_position_embeddings": 10035}
    assert linear["max_position_embeddings"] >= 10000
    yarn = rope_settings({"type": "yarn", "factor": 4}, 512, BASE, 4096)
    assert yarn["rope_parameters"]["original_max_position_embeddings"] == 4096
    assert yarn["max_position_embeddings"] == 16384
    dynamic = rope_settings({"type": "dynamic", "factor": "auto"}, 8192, BASE, 4096)
    assert dynamic == {"rope_parameters": {**BASE, "rope_type": "dynamic", "factor": 2.0}}
    assert rope_settings({"type": "linear", "factor": "auto"}, 2048, BASE, 4096) == {}  # fits: nothing to scale


@pytest.mark.parametrize("bad", [{"type": "ntk", "factor": 2}, {"type": "linear", "factor": 0.5},
                                 {"type": "linear", "factor": "big"}])
def test_rope_scaling_errors(bad):
    with pytest.raises(UserError, match="model.rope_scaling"):
        rope_settings(bad, 8192, BASE, 4096)


def test_rope_scaling_loads_on_the_tiny_model():
    cfg = compose("model.rope_scaling={type: linear, factor: auto}", "model.max_length=8192")
    model = load_model(cfg.model, cfg.hardware, settings(cfg))
    plain = load_model(compose().model, cfg.hardware, settings(compose()))
    assert model.config.rope_parameters == {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0}
    assert model.config.max_position_embeddings == 8192
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq / 2)


def reference_s2attn(q, k, v, group):
    """Masked full attention: each query sees earlier keys of its own group; the second half of the heads uses
    groups shifted by half a group (positions rolled), as LongLoRA describes."""
    heads, n = q.shape[1], q.shape[2]
    pos = torch.arange(n)
    out = torch.empty_like(q)
    for h in range(heads):
        p = (pos - group // 2) % n if h >= heads // 2 else pos
        allowed = (p[None, :] <= p[:, None]) & (p[:, None] // group == p[None, :] // group)
        scores = (q[:, h] @ k[:, h].transpose(-1, -2)) / math.sqrt(q.shape[-1])
        out[:, h] = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[:, h]
    return out.transpose(1, 2)


def test_s2attn_matches_its_definition():
    torch.manual_seed(0)
    module = torch.nn.Module().train()
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    out, _ = shifted_sparse_attention(module, q, k, v, None)
    assert out.shape == (2, 16, 4, 8)
    torch.testing.assert_close(out, reference_s2attn(q, k, v, group=4))


@pytest.fixture(scope="module")
def s2_models():
    cfg = compose("model.attn_implementation=s2attn")
    s2 = load_model(cfg.model, cfg.hardware, settings(cfg))
    full = load_model(compose("model.attn_implementation=sdpa").model, cfg.hardware, settings(cfg))
    return s2, full


@pytest.mark.parametrize("length", [16, 13])  # 13: not a multiple of the group size (padded inside)
def test_s2attn_trains_on_the_tiny_model(s2_models, length):
    s2, full = s2_models
    assert s2.config._attn_implementation == "s2attn"
    ids = torch.randint(0, 500, (2, length))
    s2.train()
    out = s2(input_ids=ids, labels=ids, use_cache=False)
    assert out.logits.shape == (2, length, s2.config.vocab_size)
    out.loss.backward()
    grad = s2.model.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    s2.zero_grad()
    full.train()
    assert not torch.allclose(out.logits, full(input_ids=ids, use_cache=False).logits)  # sparse while training


def test_s2attn_is_off_at_inference(s2_models, tmp_path):
    s2, full = s2_models
    ids = torch.randint(0, 500, (1, 16))
    s2.eval(), full.eval()
    with torch.no_grad():
        torch.testing.assert_close(s2(input_ids=ids).logits, full(input_ids=ids).logits)
    s2.save_pretrained(tmp_path)
    assert "s2attn" not in (tmp_path / "config.json").read_text()


def test_s2attn_refuses_other_architectures(tmp_path):
    from transformers import GPT2Config

    from medgpt.modeling.longcontext import load_kwargs

    GPT2Config(n_layer=1).save_pretrained(tmp_path)
    model_cfg = OmegaConf.create({"rope_scaling": None, "attn_implementation": "s2attn", "trust_remote_code": False})
    with pytest.raises(UserError, match="s2attn supports"):
        load_kwargs(model_cfg, str(tmp_path), 512)


def test_neftune_noises_training_embeddings_only(tmp_path):
    from datasets import Dataset
    from transformers import TrainerCallback

    from medgpt.config import check_trainer_args
    from medgpt.stages import sft

    cfg = compose("stage.args.neftune_noise_alpha=5", "stage.args.max_steps=2", "data.max_samples=8")
    check_trainer_args(cfg)  # a real SFTConfig field
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, cfg.hardware, settings(cfg))
    embed = model.get_input_embeddings()
    ids = torch.arange(10)[None]
    seen = {}

    class Probe(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            plain = embed.weight[ids].detach()
            model.train()
            first, second = embed(ids).detach(), embed(ids).detach()
            model.eval()
            seen.update(train_differs=not torch.equal(first, plain), noise_resampled=not torch.equal(first, second),
                        eval_plain=torch.equal(embed(ids).detach(), plain))
            model.train()

    from trl import SFTConfig

    args = SFTConfig(output_dir=str(tmp_path), max_steps=2, neftune_noise_alpha=cfg.stage.args.neftune_noise_alpha,
                     use_cpu=True, bf16=False, report_to=[], per_device_train_batch_size=2, save_strategy="no")
    rows = [{"input_ids": [1, 2, 3, 4, 5], "labels": [1, 2, 3, 4, 5]}] * 4
    trainer = sft.build_trainer(cfg, model, tokenizer, args, Dataset.from_list(rows), None, [Probe()],
                                settings(cfg))
    trainer.train()
    assert seen == {"train_differs": True, "noise_resampled": True, "eval_plain": True}
    model.train()
    assert torch.equal(embed(ids), embed.weight[ids])  # the hook is gone after training
