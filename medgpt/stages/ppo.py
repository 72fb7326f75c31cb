"""RLHF, PPO family: TRL 1.16 has no PPOTrainer, so this is trl.RLOOTrainer (REINFORCE leave-one-out, as
MedicalGPT itself moved to) against a reward model trained by stage=rm. Generation length
(stage.args.max_completion_length), KL coefficient (stage.args.beta) and samples per prompt
(stage.args.num_generations) are trainer args; stage.reward_funcs may add rule rewards beside the reward model.

    python train.py stage=ppo model.path=<sft run> stage.reward_model=<rm run> data=medical_grpo
"""
from collections import Counter

from medgpt.rewards import check_reward_funcs, check_reward_model, instantiate_reward_funcs, load_reward_model
from medgpt.stages.grpo import check_generation_batch, config_defaults, prompt_dataset

MODEL_KIND = "causal"


def prepare(rows, tokenizer, cfg):
    from trl import RLOOConfig

    check_reward_model(cfg.stage.reward_model)
    check_reward_funcs(cfg.stage.reward_funcs)
    check_generation_batch(cfg.stage.args, config_defaults(RLOOConfig))
    return prompt_dataset(rows), Counter(prompts=len(rows))


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks):
    from trl import RLOOTrainer

    reward_model, reward_tokenizer = load_reward_model(cfg.stage.reward_model)
    reward_model.config._name_or_path = "reward_model"  # TRL logs rewards/<last part of this>/mean, else "final"
    extra = instantiate_reward_funcs(cfg.stage.reward_funcs)
    return RLOOTrainer(model=model, reward_funcs=[reward_model, *extra], args=args,
                       reward_processing_classes=[reward_tokenizer, *[None] * len(extra)],
                       train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
                       callbacks=callbacks)
