"""GRPO (TRL's GRPOTrainer) on question/answer prompts, rewarded by the functions in stage.reward_funcs
(medgpt.training.rewards: answer accuracy, <think>/<answer> format, length penalty, a trained reward model, or your
own). Each function's mean reward is logged as rewards/<name>/mean. The completions' log-probabilities go through
medgpt's labelled head (medgpt.training.losses.add_labelled_lm_head, at the sampling temperature), as DPO's do; on a
CPU the rollouts come from medgpt.training.rollout (an exact sampler faster than torch.multinomial there).

    python train.py stage=grpo data=medical_grpo stage.args.num_generations=4 stage.args.max_completion_length=256
"""
from collections import Counter

from datasets import Dataset

from medgpt.errors import UserError
from medgpt.stages.dpo import labelled_head_trainer
from medgpt.training.guard import guarded
from medgpt.training.losses import labelled_loss_applies
from medgpt.training.rewards import check_answers, check_reward_funcs, instantiate_reward_funcs
from medgpt.training.rollout import applies as cpu_rollout_applies
from medgpt.training.rollout import cpu_rollout

MODEL_KIND = "causal"
CACHEABLE = False  # prepare() does more than tokenize (pairs, prompts): prepared afresh each run


def prompt_dataset(rows) -> Dataset:
    """Prompt records -> {prompt, answer}; `answer` reaches reward functions as a keyword."""
    return Dataset.from_list([{"prompt": r["prompt"], "answer": r.get("answer")} for r in rows])


def check_generation_batch(args_cfg, defaults) -> None:
    """TRL needs the generation batch (per-device batch x steps per generation) divisible by num_generations."""
    get = lambda key: args_cfg.get(key) if args_cfg.get(key) is not None else defaults[key]  # noqa: E731
    generations, batch = get("num_generations"), get("per_device_train_batch_size")
    steps = get("steps_per_generation") or get("gradient_accumulation_steps")
    if generations and (batch * steps) % generations:
        raise UserError(f"stage.args.num_generations={generations} must divide per_device_train_batch_size x "
                        f"steps_per_generation = {batch} x {steps}; change one of them")


def check_generation_backend(args_cfg, settings) -> None:
    """stage.args.use_vllm=true (GRPO, RLOO, distillation: vLLM generates the completions, `vllm_mode: colocate`
    shares the training GPU) needs a CUDA GPU and the vllm package: refused in one line before any model loads."""
    import importlib.util

    if not args_cfg.get("use_vllm"):
        return
    mode = args_cfg.get("vllm_mode") or "colocate"
    if mode not in ("colocate", "server"):
        raise UserError(f"stage.args.vllm_mode={mode}: use colocate (vLLM inside the training process) or server "
                        f"(a separate `trl vllm-serve`)")
    if not settings.cuda:
        raise UserError("stage.args.use_vllm=true needs a CUDA GPU and none is used here (CPU run): drop it "
                        "(stage.args.use_vllm=false generates with transformers)")
    if importlib.util.find_spec("vllm") is None:
        raise UserError("stage.args.use_vllm=true needs vLLM, which is not installed: pip install 'trl[vllm]', or "
                        "set stage.args.use_vllm=false")


def config_defaults(config_class) -> dict:
    fields = config_class.__dataclass_fields__
    return {k: fields[k].default for k in ("num_generations", "per_device_train_batch_size", "steps_per_generation",
                                           "gradient_accumulation_steps")}


def prepare(rows, tokenizer, cfg, settings):
    from trl import GRPOConfig

    if not cfg.stage.reward_funcs:
        raise UserError("stage=grpo needs reward functions: stage.reward_funcs=[{_target_: "
                        "medgpt.training.rewards.answer_accuracy}, ...] (see conf/stage/grpo.yaml)")
    check_reward_funcs(cfg.stage.reward_funcs)
    check_answers(cfg.stage.reward_funcs, rows)
    check_generation_batch(cfg.stage.args, config_defaults(GRPOConfig))
    check_generation_backend(cfg.stage.args, settings)
    return prompt_dataset(rows), Counter(prompts=len(rows), with_answer=sum(r.get("answer") is not None
                                                                              for r in rows))


def trainer_class(args, labelled_head: bool = True):
    """TRL's GRPOTrainer with medgpt's labelled head at `args.temperature` (bench/align_throughput.py measures it);
    TRL's own head where an entropy bonus needs the entropy's gradient (entropy_coef, use_adaptive_entropy), which
    medgpt's head computes without one, or where `labelled_head` is false."""
    from trl import GRPOTrainer

    if not labelled_head or args.entropy_coef or args.use_adaptive_entropy:
        return guarded(GRPOTrainer)
    return labelled_head_trainer(GRPOTrainer, metrics=("entropy",), temperature=args.temperature)


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
    import warnings

    labelled_head = labelled_loss_applies(model, cfg.hardware.deepspeed, args.torch_compile)
    rollout = cpu_rollout if cpu_rollout_applies(args, tokenizer, settings.cuda) else None
    with warnings.catch_warnings():  # TRL calls `rollout_func` experimental; medgpt pins TRL (constraints.txt)
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'")
        return trainer_class(args, labelled_head)(
            model=model, reward_funcs=instantiate_reward_funcs(cfg.stage.reward_funcs), args=args,
            train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=callbacks,
            rollout_func=rollout)
