"""SFT's loss is the same whether it comes from the model's logits (default) or TRL's fused LM head."""
import json

from conftest import train_in_process


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
