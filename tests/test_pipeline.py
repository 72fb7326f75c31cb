"""medgpt.tools.pipeline: chained stages, each from the previous policy's final/, one summary at the end."""
import json

import pytest

from medgpt.errors import UserError

STEPS = ["stage.args.max_steps=2", "stage.args.logging_steps=1"]
RLOO_SMALL = ["ppo:stage.args.max_completion_length=8", "ppo:stage.args.num_generations=2",
              "ppo:stage.args.per_device_train_batch_size=2"]


def test_split_overrides():
    from medgpt.tools.pipeline import split_overrides

    out = split_overrides(["sft", "dpo"], ["logger=none", "dpo:stage.args.beta=0.2", "sft:data=medical_sft"])
    assert out == {"sft": ["logger=none", "data=medical_sft"], "dpo": ["logger=none", "stage.args.beta=0.2"]}
    with pytest.raises(UserError, match="not in the pipeline"):
        split_overrides(["sft"], ["ppo:stage.args.beta=0.1"])


def test_unknown_stage_fails_before_training(tmp_path):
    from medgpt.tools.pipeline import run_pipeline

    with pytest.raises(UserError, match="unknown stage 'sfx'"):
        run_pipeline(["sft", "sfx"], [f"output_root={tmp_path}"])


def test_pt_sft_dpo_chain(tmp_path, capsys):
    from medgpt.tools.pipeline import run_pipeline

    results = run_pipeline(["pt", "sft", "dpo"], [f"output_root={tmp_path}", "logger=none", *STEPS],
                           root=tmp_path / "chain")
    assert [r["status"] for r in results] == ["completed"] * 3
    assert results[0]["model_path"] == "tiny"
    assert results[1]["model_path"] == str(tmp_path / "chain" / "1-pt" / "final")
    assert results[2]["model_path"] == str(tmp_path / "chain" / "2-sft" / "final")
    summary = json.loads((tmp_path / "chain" / "summary.json").read_text())
    assert [r["stage"] for r in summary["results"]] == ["pt", "sft", "dpo"]
    table = capsys.readouterr().out
    assert "3  dpo     completed" in table and "rewards/margins" in table


def test_sft_rm_ppo_chain_with_lora_adapters(tmp_path, capsys):
    from medgpt.tools.pipeline import run_pipeline

    results = run_pipeline(["sft", "rm", "ppo"], [f"output_root={tmp_path}", "logger=none", "hardware=lora",
                                                  "rm:data.eval_split=0", *STEPS, *RLOO_SMALL],
                           root=tmp_path / "chain")
    assert [r["status"] for r in results] == ["completed"] * 3
    sft_final = str(tmp_path / "chain" / "1-sft" / "final")
    assert results[1]["model_path"] == sft_final and results[2]["model_path"] == sft_final  # rm is beside the chain
    ppo_config = (tmp_path / "chain" / "3-ppo" / "config.yaml").read_text()
    assert f"reward_model: {tmp_path / 'chain' / '2-rm' / 'final'}" in ppo_config
    assert "adapter_merge: true" in ppo_config  # the SFT adapter is merged; PPO trains a fresh one
    assert "reward=" in capsys.readouterr().out
