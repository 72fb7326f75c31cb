"""stage=ppo (trl.RLOOTrainer): against a stage=rm reward model, or answer accuracy on the embedded default."""
import json

import pytest

from alignment_helpers import error_before_model_load
from conftest import SAMPLES, train_in_process

RLOO_SMALL = ["stage.args.max_steps=2", "stage.args.max_completion_length=8", "stage.args.num_generations=2",
              "stage.args.per_device_train_batch_size=2", "stage.args.logging_steps=1"]


def test_ppo_on_the_embedded_default_rewards_answer_accuracy(tmp_path):
    run_dir, metrics = train_in_process(tmp_path, "stage=ppo", *RLOO_SMALL)
    history = json.loads((run_dir / "history.json").read_text())["log_history"]
    logged = {key for entry in history for key in entry}
    assert metrics["status"] == "completed" and "rewards/answer_accuracy/mean" in logged


def test_ppo_with_no_reward_at_all_or_answerless_prompts_fails_before_model_load(tmp_path, monkeypatch):
    message = error_before_model_load(monkeypatch, tmp_path / "a", "stage=ppo", "stage.reward_funcs=[]")
    assert "stage=ppo needs a reward: stage.reward_model=<a stage=rm run>" in message
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"question": "q1", "answer": "a"}\n{"question": "q2"}\n', encoding="utf-8")
    message = error_before_model_load(monkeypatch, tmp_path / "b", "stage=ppo", f"data.train_files=[{prompts}]")
    assert "1 of 2 prompt records have no 'answer' (first: record 2)" in message


@pytest.mark.samples
def test_ppo_with_lora_reward_model_trains_and_reloads(tmp_path):
    import json

    from medgpt.modeling.load import load_for_inference

    rm_dir, _ = train_in_process(tmp_path / "rm", "stage=rm", "hardware=lora", "stage.args.max_steps=1",
                                 "data.eval_split=0")
    assert (rm_dir / "final" / "adapter_config.json").exists()  # a LoRA reward model: merged when loaded
    run_dir, metrics = train_in_process(tmp_path / "ppo", "stage=ppo", f"stage.reward_model={rm_dir}",
                                        f"data.train_files=[{SAMPLES / 'grpo_sample.jsonl'}]", "data.max_samples=8",
                                        *RLOO_SMALL)
    assert metrics["status"] == "completed" and metrics["global_step"] == 2
    logged = json.loads((run_dir / "history.json").read_text())["log_history"][0]
    assert "rewards/reward_model/mean" in logged and "kl" in logged
    assert load_for_inference(str(run_dir))[2]["stage"] == "ppo"

    # the same reward model as a GRPO reward function, from a config node
    from omegaconf import OmegaConf

    from medgpt.training.rewards import instantiate_reward_funcs

    (score,) = instantiate_reward_funcs(OmegaConf.create([{"_target_": "medgpt.training.rewards.reward_model",
                                                           "path": str(rm_dir)}]))
    prompt = [{"role": "user", "content": "How is gout treated?"}]
    values = score(prompts=[prompt, prompt], completions=["See a doctor.", [{"role": "assistant", "content": "no"}]])
    assert score.__name__ == "reward_model" and len(values) == 2 and values[0] != values[1]
