"""stage=grpo: reward functions on hand-written completions; a short GRPO run with per-function reward logs."""
import pytest

from alignment_helpers import error_before_model_load
from conftest import SAMPLES, train_in_process


def chat(text):
    return [{"role": "assistant", "content": text}]


def test_answer_accuracy_numeric_and_short_answers():
    from medgpt.training.rewards import answer_accuracy

    completions = ["<think>2+2</think><answer>4</answer>", "<think>hm</think><answer>4.0</answer>", "It is 5.",
                   chat("You should see a Cardiologist."), chat("a dermatologist"), "anything"]
    answers = ["4", "4", "4", "cardiologist", "cardiologist", None]
    assert answer_accuracy(completions, answer=answers) == [1.0, 1.0, 0.0, 1.0, 0.0, None]
    assert answer_accuracy(["the total is 1,000"], answer=["1000"]) == [1.0]
    assert answer_accuracy(["<answer>cardiologists club</answer>"], answer=["cardiologist"]) == [0.0]


def test_think_answer_format():
    from medgpt.training.rewards import think_answer_format

    completions = ["<think>why</think>\n<answer>so</answer>", "<answer>so</answer>", "<think>why</think>",
                   "x <think>a</think><answer>b</answer>", chat("<think>a</think> <answer>b</answer>\n")]
    assert think_answer_format(completions) == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_length_penalty():
    from medgpt.training.rewards import length_penalty

    assert length_penalty(["a" * 10, "a" * 15, "a" * 100], max_chars=10) == [0.0, -0.5, -1.0]


def test_reward_funcs_from_config_are_named_callables():
    from omegaconf import OmegaConf

    from medgpt.training.rewards import instantiate_reward_funcs
    from trl.trainer.utils import get_callable_name

    nodes = OmegaConf.create([{"_target_": "medgpt.training.rewards.answer_accuracy"},
                              {"_target_": "medgpt.training.rewards.length_penalty", "max_chars": 3}])
    accuracy, penalty = instantiate_reward_funcs(nodes)
    assert [get_callable_name(f) for f in (accuracy, penalty)] == ["answer_accuracy", "length_penalty"]
    assert penalty(["abcdef"]) == [-1.0]


def test_reward_model_reward_rejects_a_policy_run(sft_run):
    from medgpt.errors import UserError
    from medgpt.training.rewards import check_reward_model

    with pytest.raises(UserError, match="not a reward model"):
        check_reward_model(str(sft_run[0]))


@pytest.mark.samples
def test_grpo_trains_on_medicalgpt_prompts_and_logs_each_reward(tmp_path, monkeypatch):
    """A CPU run: medgpt's rollouts (medgpt.training.rollout) generate the completions, two per prompt."""
    import json

    from medgpt.modeling.load import load_for_inference
    from medgpt.stages import grpo

    batches = []
    original = grpo.cpu_rollout
    monkeypatch.setattr(grpo, "cpu_rollout", lambda prompts, trainer: batches.append(len(prompts)) or
                        original(prompts, trainer))
    run_dir, metrics = train_in_process(
        tmp_path, "stage=grpo", f"data.train_files=[{SAMPLES / 'grpo_sample.jsonl'}]", "data.max_samples=8",
        "stage.args.max_steps=2", "stage.args.max_completion_length=8", "stage.args.num_generations=2",
        "stage.args.per_device_train_batch_size=2", "stage.args.logging_steps=1")
    assert metrics["prompts"] == 8 and metrics["with_answer"] == 8 and metrics["global_step"] == 2
    assert batches == [2, 2]  # one prompt x num_generations=2 per step
    logged = json.loads((run_dir / "history.json").read_text())["log_history"][0]
    for name in ("answer_accuracy", "think_answer_format", "length_penalty"):
        assert f"rewards/{name}/mean" in logged
    assert load_for_inference(str(run_dir))[2]["stage"] == "grpo"


@pytest.mark.parametrize("override, message", [
    ("stage.reward_funcs=[]", "stage=grpo needs reward functions"),
    ("stage.args.num_generations=3", "must divide"),
    ("stage.reward_funcs=[{_target_: medgpt.training.rewards.no_such}]", "cannot import 'medgpt.training.rewards.no_such'"),
])
def test_grpo_config_errors_before_model_load(tmp_path, monkeypatch, override, message):
    assert message in error_before_model_load(monkeypatch, tmp_path, "stage=grpo", override)


PRESETS = {"grpo_dapo": {"loss_type": "dapo", "epsilon_high": 0.28, "mask_truncated_completions": True},
           "grpo_dr": {"loss_type": "dr_grpo", "scale_rewards": "none"},
           "grpo_bnpo": {"loss_type": "bnpo"},
           "grpo_gspo": {"loss_type": "grpo", "importance_sampling_level": "sequence", "steps_per_generation": 4},
           "grpo_cispo": {"loss_type": "cispo", "epsilon_high": 5.0}}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_grpo_loss_presets_compose_and_train_one_step(tmp_path, preset):
    """Each preset composes onto stage=grpo and its settings reach the trainer: one step on the demo prompts."""
    from omegaconf import OmegaConf

    from conftest import compose

    cfg = compose(f"stage={preset}")
    assert cfg.stage.module == "medgpt.stages.grpo" and cfg.data.name == f"{preset}_demo"
    assert {k: cfg.stage.args[k] for k in PRESETS[preset]} == PRESETS[preset]
    run_dir, metrics = train_in_process(tmp_path, f"stage={preset}", "stage.args.max_steps=1",
                                        "stage.args.max_completion_length=4", "stage.args.num_generations=2",
                                        "stage.args.per_device_train_batch_size=2", "stage.args.logging_steps=1")
    assert metrics["status"] == "completed" and metrics["global_step"] == 1
    args = OmegaConf.load(run_dir / "config.yaml").stage.args
    assert {k: args[k] for k in PRESETS[preset]} == PRESETS[preset]


@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_vllm_generation_is_refused_on_cpu_before_model_load(tmp_path, monkeypatch, stage):
    message = error_before_model_load(monkeypatch, tmp_path, f"stage={stage}", "stage.args.use_vllm=true")
    assert message == ("stage.args.use_vllm=true needs a CUDA GPU and none is used here (CPU run): drop it "
                       "(stage.args.use_vllm=false generates with transformers)")


def test_vllm_generation_without_vllm_or_with_an_unknown_mode_is_refused(monkeypatch):
    import importlib.util
    from types import SimpleNamespace

    from medgpt.errors import UserError
    from medgpt.stages.grpo import check_generation_backend

    gpu = SimpleNamespace(cuda=True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else object())
    with pytest.raises(UserError, match=r"needs vLLM, which is not installed: pip install 'trl\[vllm\]'"):
        check_generation_backend({"use_vllm": True, "vllm_mode": "colocate"}, gpu)
    with pytest.raises(UserError, match="vllm_mode=remote: use colocate"):
        check_generation_backend({"use_vllm": True, "vllm_mode": "remote"}, gpu)
    check_generation_backend({"use_vllm": False}, SimpleNamespace(cuda=False))  # off: nothing to check


@pytest.mark.samples
def test_grpo_trains_the_same_with_medgpts_head(tmp_path, monkeypatch):
    """stage=grpo's completions are scored by medgpt's labelled head at the sampling temperature (its chunked
    log-probs run), and two steps log the loss, entropy and rewards that TRL's own head gives."""
    import json

    from medgpt.stages import grpo
    from medgpt.training import losses

    logged = {}
    for ours in (True, False):
        monkeypatch.setattr(grpo, "labelled_loss_applies", lambda *a, ours=ours: ours)
        calls = []
        original = losses.linear_log_probs
        monkeypatch.setattr(losses, "linear_log_probs", lambda *a, **k: calls.append(k["temperature"]) or
                            original(*a, **k))
        run_dir, metrics = train_in_process(
            tmp_path / str(ours), "stage=grpo", f"data.train_files=[{SAMPLES / 'grpo_sample.jsonl'}]",
            "data.max_samples=4", "stage.args.max_steps=2", "stage.args.max_completion_length=8",
            "stage.args.num_generations=2", "stage.args.per_device_train_batch_size=2", "stage.args.logging_steps=1",
            "stage.args.temperature=0.7", "stage.args.learning_rate=1e-3")
        assert metrics["status"] == "completed"
        assert set(calls) == ({0.7} if ours else set())
        history = json.loads((run_dir / "history.json").read_text())["log_history"]
        logged[ours] = [{k: v for k, v in h.items() if k in ("loss", "entropy", "reward") or k.startswith("kl")}
                        for h in history if "loss" in h]
    assert len(logged[True]) == 2 and {"loss", "entropy", "reward"} <= logged[True][0].keys(), logged
    for a, b in zip(logged[True], logged[False]):
        assert a.keys() == b.keys()
        for key in a:
            assert abs(a[key] - b[key]) < 1e-4 * max(1, abs(b[key])), (key, logged)


def test_grpo_keeps_trls_head_where_the_entropy_needs_a_gradient():
    """An entropy bonus (entropy_coef, adaptive entropy) differentiates the entropy, which medgpt's head computes
    without gradient: TRL's head stays there, and where labelled_loss_applies is false."""
    from trl import GRPOConfig

    from medgpt.stages.grpo import trainer_class

    def name(labelled_head=True, **kwargs):
        args = GRPOConfig(output_dir="unused", use_cpu=True, **kwargs)
        return trainer_class(args, labelled_head).__name__

    assert name() == "LabelledHeadGRPOTrainer"
    assert name(entropy_coef=0.01) == name(use_adaptive_entropy=True) == name(False) == "GuardedGRPOTrainer"
