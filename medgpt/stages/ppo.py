"""RLHF, PPO family: TRL 1.16 has no PPOTrainer, so this is trl.RLOOTrainer (REINFORCE leave-one-out, as
MedicalGPT itself moved to) against a reward model trained by stage=rm. Generation length
(stage.args.max_completion_length), KL coefficient (stage.args.beta) and samples per prompt
(stage.args.num_generations) are trainer args; stage.reward_funcs may add rule rewards beside the reward model.
Without a reward model (e.g. the embedded demo) the policy is rewarded for matching the data's answers.

    python train.py stage=ppo model.path=<sft run> stage.reward_model=<rm run> data=medical_grpo
"""
import logging

from collections import Counter

from medgpt.errors import UserError
from medgpt.modeling.load import LoadPolicy
from medgpt.stages.grpo import check_generation_backend, check_generation_batch, config_defaults, prompt_dataset
from medgpt.training.guard import guarded
from medgpt.training.rewards import (check_answers, check_reward_funcs, check_reward_model, instantiate_reward_funcs,
                                     load_reward_model)

MODEL_KIND = "causal"
CACHEABLE = False  # prepare() does more than tokenize (pairs, prompts): prepared afresh each run
log = logging.getLogger(__name__)
ANSWER_REWARD = [{"_target_": "medgpt.training.rewards.answer_accuracy"}]


def reward_nodes(stage) -> list:
    """stage.reward_funcs when given; else none beside a reward model, or answer accuracy without one."""
    if stage.reward_funcs is not None:
        return list(stage.reward_funcs)
    if stage.reward_model:
        return []
    log.warning("stage=ppo without stage.reward_model: rewarding answer accuracy against the data's answers "
                "(train a reward model with stage=rm for RLHF)")
    return ANSWER_REWARD


def prepare(rows, tokenizer, cfg, settings):
    from trl import RLOOConfig

    nodes = reward_nodes(cfg.stage)
    if cfg.stage.reward_model:
        check_reward_model(cfg.stage.reward_model)
    elif not nodes:
        raise UserError("stage=ppo needs a reward: stage.reward_model=<a stage=rm run> and/or stage.reward_funcs")
    check_reward_funcs(nodes)
    check_answers(nodes, rows)
    check_generation_batch(cfg.stage.args, config_defaults(RLOOConfig))
    check_generation_backend(cfg.stage.args, settings)
    return prompt_dataset(rows), Counter(prompts=len(rows))


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
    from trl import RLOOTrainer

    funcs, processors = [], []
    if cfg.stage.reward_model:
        reward_model, reward_tokenizer = load_reward_model(cfg.stage.reward_model, LoadPolicy.of_run(cfg))
        reward_model.config.name_or_path = "reward_model"  # TRL logs rewards/<its last part>/mean
        funcs, processors = [reward_model], [reward_tokenizer]
    extra = instantiate_reward_funcs(reward_nodes(cfg.stage))
    return guarded(RLOOTrainer)(model=model, reward_funcs=[*funcs, *extra], args=args,
                                reward_processing_classes=[*processors, *[None] * len(extra)],
                                train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
                                callbacks=callbacks)
