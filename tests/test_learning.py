"""Alignment that learns, on the tiny model in a few steps: RLOO (stage=ppo) and GRPO raise the mean reward of an
easy reward (completions containing "in"); IPO, SimPO, ORPO and KTO raise the chosen-over-rejected margin on
obvious pairs. Each test asserts the rise between the first and the last logged steps (seeded, constant LR)."""
import json

import pytest

from alignment_helpers import write_obvious_pairs
from conftest import train_in_process

EASY_REWARD = "stage.reward_funcs=[{_target_: medgpt.training.rewards.contains_keyword, keywords: in}]"


def logged(run_dir, key):
    rows = json.loads((run_dir / "history.json").read_text())["log_history"]
    return [r[key] for r in rows if key in r]


def mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize("stage", ["ppo", "grpo"])  # ppo: trl.RLOOTrainer
def test_rl_raises_the_mean_reward(tmp_path, stage):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"Say something about {topic}."}) + "\n"
                               for topic in ("gout", "asthma", "acne", "influenza")), encoding="utf-8")
    run_dir, metrics = train_in_process(
        tmp_path, f"stage={stage}", f"data.train_files=[{prompts}]", EASY_REWARD, "stage.args.max_steps=20",
        "stage.args.max_completion_length=8", "stage.args.num_generations=8",
        "stage.args.per_device_train_batch_size=8",
        "stage.args.learning_rate=3e-2", "stage.args.lr_scheduler_type=constant", "stage.args.beta=0",
        "stage.args.logging_steps=1", "seed=0")
    rewards = logged(run_dir, "reward")
    assert len(rewards) == 20 and logged(run_dir, "rewards/contains_keyword/mean") == rewards
    start, end = mean(rewards[:3]), mean(rewards[-3:])
    print(f"{stage}: mean reward {start:.3f} -> {end:.3f}")
    # measured (seed 0): ppo 0.54 -> 1.00; grpo 0.25 -> 1.00 (its CPU sampler draws other samples than TRL's:
    # seeds 0-5 all end at 1.00 after 20 steps, two of them below 0.9 after 12)
    assert end >= 0.9 and end - start >= 0.25


@pytest.mark.parametrize("stage, rise", [("ipo", 1.0), ("simpo", 1.0), ("orpo", 0.05), ("kto", 1.0)])
def test_preference_stages_raise_the_margin(tmp_path, stage, rise):
    data = write_obvious_pairs(tmp_path / "pairs.jsonl", 32)
    run_dir, metrics = train_in_process(tmp_path, f"stage={stage}", f"data.train_files=[{data}]", "data.eval_split=0",
                                        "stage.args.max_steps=8", "stage.args.learning_rate=1e-3",
                                        "stage.args.warmup_steps=0", "stage.args.logging_steps=1", "seed=0")
    margins = logged(run_dir, "rewards/margins")
    assert len(margins) == 8
    print(f"{stage}: chosen-over-rejected margin {margins[0]:.3f} -> {margins[-1]:.3f}")
    # measured: ipo 0.000 -> 1.961, simpo -1.285 -> 1.703, orpo -0.064 -> 0.020, kto 0.000 -> 2.099
    assert margins[-1] > 0 and margins[-1] - margins[0] >= rise
