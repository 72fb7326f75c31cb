"""SFT's loss is the same from labelled positions only (default), TRL's fused LM head, or the model's own loss."""
import json

import torch

from conftest import train_in_process
from medgpt.losses import labelled_positions_loss


def test_labelled_positions_loss_equals_the_models_loss_and_gradients(tiny_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    ids = torch.randint(5, 1000, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100  # prompt tokens carry no loss
    reference = model(input_ids=ids, labels=labels).loss
    reference.backward()
    ref_grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    loss = labelled_positions_loss(model, {"input_ids": ids, "labels": labels})
    loss.backward()
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight.grad, ref_grad, atol=1e-6, rtol=1e-4)


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
