"""SFT's loss is the same from labelled positions only (default), TRL's fused LM head, or the model's own loss."""
import json

import pytest
import torch

from conftest import train_in_process
from medgpt.training.losses import labelled_positions_loss


def _loss_and_grads(model, loss_of):
    model.zero_grad()
    loss = loss_of()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("variant", ["full", "lora", "checkpointing"])
def test_labelled_positions_loss_equals_the_models_loss_and_gradients(tiny_dir, variant):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    if variant == "lora":  # the gathering hooks then sit on PEFT's wrappers of q_proj and o_proj
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.train()
    checkpointing = variant == "checkpointing"
    if checkpointing:  # recomputation in backward must not see the last layer's gathered positions
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(5, 1000, (3, 12))
    labels = ids.clone()
    labels[:, :5] = -100  # prompt tokens carry no loss
    labels[1, 7:9] = -100  # a second user turn inside the dialogue
    labels[2, 10:] = -100  # right padding
    reference, ref_grads = _loss_and_grads(model, lambda: model(input_ids=ids, labels=labels).loss)
    seen = []
    last = model.get_base_model().model.layers[-1] if variant == "lora" else model.model.layers[-1]
    hook = last.mlp.down_proj.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    loss, grads = _loss_and_grads(model, lambda: labelled_positions_loss(model, {"input_ids": ids, "labels": labels}))
    hook.remove()
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    assert ref_grads and all(grad is not None for grad in ref_grads.values())
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    predicting = int((labels[:, 1:] != -100).sum())
    if checkpointing:  # every position, in forward and again in the recomputation
        assert all(shape[:2] == ids.shape for shape in seen), seen
    else:  # the last layer's MLP ran only where a position predicts a label
        assert [shape[:2] for shape in seen] == [(1, predicting)]
    assert not last.mlp._forward_hooks  # the gathering hooks are gone afterwards


def test_mixture_of_experts_and_kwarg_calls_run_every_position():
    import torch.nn as nn

    from medgpt.training.losses import last_layer_position_wise, only_at

    layer = nn.Module()
    layer.self_attn, layer.mlp = nn.Module(), nn.Module()
    layer.self_attn.q_proj, layer.self_attn.o_proj = nn.Linear(4, 4), nn.Linear(4, 4)
    layer.mlp.down_proj, layer.mlp.experts = nn.Linear(4, 4), nn.ModuleList()
    inner = nn.Module()
    inner.model = nn.Module()
    inner.model.layers = nn.ModuleList([layer])
    assert last_layer_position_wise(inner) == [layer.self_attn.q_proj, layer.self_attn.o_proj]
    keep = torch.tensor([[True, False, True]])
    x = torch.randn(1, 3, 4)
    with only_at([layer.self_attn.q_proj], keep):
        gathered = layer.self_attn.q_proj(x)
        by_keyword = layer.self_attn.q_proj(input=x)
    torch.testing.assert_close(gathered[keep], layer.self_attn.q_proj(x)[keep])
    assert not gathered[~keep].any()
    torch.testing.assert_close(by_keyword, layer.self_attn.q_proj(x))


def test_sft_losses_match_with_and_without_the_fused_lm_head(tmp_path):
    losses = {}
    for fused in ("true", "false"):
        run_dir, metrics = train_in_process(tmp_path / fused, f"stage.fused_lm_head={fused}", "stage.args.max_steps=3",
                                            "stage.args.logging_steps=1", "stage.args.learning_rate=1e-3")
        assert metrics["status"] == "completed"
        history = json.loads((run_dir / "history.json").read_text())["log_history"]
        losses[fused] = [h["loss"] for h in history if "loss" in h]
    assert len(losses["true"]) == 3
    for a, b in zip(losses["true"], losses["false"]):
        assert abs(a - b) < 1e-4, losses
