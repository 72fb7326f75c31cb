"""Reward functions for medical RL (medgpt.training.rewards) on hand-written completions: multiple-choice letters,
the <think>/<answer> format, keywords, and a reward model as a reward function of GRPO and of RLOO."""
import json

import pytest

from conftest import train_in_process


def chat(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("(B) Cardiologist", "B"), ("C. general practitioner", "C"), ("D)", "D"),
    ("Answer: C", "C"), ("The answer is (d).", "D"), ("I think the answer is A because it fits.", "A"),
    ("答案：B", "B"), ("答案是 C", "C"), ("正确选项为D", "D"), ("Option E is right.", "E"),
    ("<think>C looks plausible, but no</think><answer>D</answer>", "D"),
    ("I think so.", None), ("A doctor should examine the rash.", None), ("The answer is a rash.", None),
    ("cardiologist", None), ("", None),
])
def test_choice_letter_from_completions(text, letter):
    from medgpt.training.rewards import choice_letter

    assert choice_letter(text) == letter


def test_choice_accuracy_scores_letters_against_the_answer():
    from medgpt.training.rewards import choice_accuracy

    completions = ["<think>endocrine</think><answer>D</answer>", "Answer: B", chat("(D) endocrinologist"),
                   "endocrinologist", "The answer is D", "I would say F"]
    answers = ["D", "D", "D. endocrinologist", "D", None, "F"]
    assert choice_accuracy(completions, answer=answers) == [1.0, 0.0, 1.0, 0.0, None, 0.0]
    # options beyond `letters` are not answers; gold answers that name no letter are skipped (None)
    assert choice_accuracy(["Answer: F"], answer=["F"], letters="ABCDEF") == [1.0]
    assert choice_accuracy(["Answer: B"], answer=["cardiologist"]) == [None]


def test_think_answer_format_on_hand_written_completions():
    from medgpt.training.rewards import think_answer_format

    completions = ["<think>痛风需要降尿酸</think>\n<answer>别嘌醇</answer>",
                   "<think></think><answer>x</answer>",
                   "<answer>x</answer><think>y</think>", "<think>a</think><answer>b</answer> and more",
                   chat("<think>a\nb</think>\n\n<answer>c\nd</answer>")]
    assert think_answer_format(completions) == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_contains_keyword():
    from medgpt.errors import UserError
    from medgpt.training.rewards import contains_keyword

    completions = ["Please see a Doctor soon.", "请咨询医生。", chat("rest and fluids"), "doctoral"]
    assert contains_keyword(completions, keywords=["doctor", "医生"]) == [1.0, 1.0, 0.0, 1.0]
    assert contains_keyword(["in"], keywords="IN") == [1.0]
    with pytest.raises(UserError, match="contains_keyword: keywords=\\[\\]"):
        contains_keyword(["x"], keywords=[])


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A random sequence-classification head on the tiny model (what stage=rm saves), built without training."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from medgpt.modeling.tiny import tiny_path

    folder = tmp_path_factory.mktemp("reward_model")
    config = AutoConfig.from_pretrained(tiny_path(), num_labels=1)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_path()).save_pretrained(folder)
    return folder


def test_reward_model_reward_scores_hand_written_completions(reward_model_dir):
    from omegaconf import OmegaConf

    from medgpt.training.rewards import instantiate_reward_funcs

    (score,) = instantiate_reward_funcs(OmegaConf.create([{"_target_": "medgpt.training.rewards.reward_model",
                                                           "path": str(reward_model_dir), "batch_size": 2}]))
    prompt = [{"role": "user", "content": "How is gout treated?"}]
    completions = ["See a doctor; colchicine or NSAIDs for flares.", chat("no no no"), "Drink water."]
    values = score(prompts=[prompt] * 3, completions=completions)
    assert score.__name__ == "reward_model" and len(values) == 3 and len(set(values)) == 3
    assert score(prompts=[prompt], completions=completions[:1]) == pytest.approx(values[:1], abs=1e-5)


@pytest.mark.parametrize("stage", ["grpo", "ppo"])  # ppo: RLOO
def test_reward_model_reward_trains_grpo_and_rloo(tmp_path, reward_model_dir, stage):
    reward = f"stage.reward_funcs=[{{_target_: medgpt.training.rewards.reward_model, path: '{reward_model_dir}'}}]"
    run_dir, metrics = train_in_process(tmp_path, f"stage={stage}", reward, "stage.args.max_steps=1",
                                        "stage.args.max_completion_length=4", "stage.args.num_generations=2",
                                        "stage.args.per_device_train_batch_size=2", "stage.args.logging_steps=1")
    assert metrics["status"] == "completed"
    logged = json.loads((run_dir / "history.json").read_text())["log_history"][0]
    assert "rewards/reward_model/mean" in logged


def test_choice_accuracy_needs_letter_answers_before_any_model_loads(tmp_path, monkeypatch):
    from alignment_helpers import error_before_model_load

    prompts = tmp_path / "mcq.jsonl"
    prompts.write_text('{"question": "Which specialist? A. cardiologist B. dermatologist", "answer": "A"}\n'
                       '{"question": "Which specialist? A. cardiologist B. dermatologist", "answer": "cardiologist"}\n',
                       encoding="utf-8")
    message = error_before_model_load(monkeypatch, tmp_path, "stage=grpo", f"data.train_files=[{prompts}]",
                                      "stage.reward_funcs=[{_target_: medgpt.training.rewards.choice_accuracy}]")
    assert "1 of 2 prompt records have an 'answer' without an option letter (first: record 2: 'cardiologist')" \
        in message
