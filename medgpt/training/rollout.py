"""GRPO rollouts on a CPU: the prompts rendered as TRL's GRPOTrainer renders them, the completions generated with the
KV cache as its transformers path does, but the tokens drawn by medgpt.modeling.sampling instead of
`torch.multinomial` (the larger share of a rollout's time on a CPU at real vocabularies: docs/performance.md). Given to
the trainer as its `rollout_func`; `applies` says where (elsewhere TRL generates: on GPUs, with vLLM, with tools).

    python train.py stage=grpo data=medical_grpo model=qwen3-0.6b       # a CPU run: rollouts come from here
"""
from __future__ import annotations

import torch

from medgpt.modeling.generate import left_padded
from medgpt.modeling.sampling import sampling_processors


def applies(args, processing_class, cuda: bool) -> bool:
    """CPU runs whose generation TRL would do with transformers' `generate()` alone: no CUDA, no vLLM, no continuous
    batching, no extra `generation_kwargs` (kept exact by TRL's own path), a text tokenizer (no image processor).
    medgpt's stages pass GRPOTrainer no `tools`, whose calling loop this rollout would not render."""
    from transformers import ProcessorMixin

    return not (cuda or args.use_vllm or getattr(args, "use_transformers_paged", False) or args.generation_kwargs
                or isinstance(processing_class, ProcessorMixin))


def prompt_ids(prompts: list, trainer) -> list:
    """Token ids of each prompt, as GRPOTrainer tokenizes them (its chat template and chat_template_kwargs)."""
    tokenizer = trainer.processing_class
    if prompts and isinstance(prompts[0], list):  # conversational: lists of messages
        return tokenizer.apply_chat_template(conversation=prompts, chat_template=trainer.chat_template,
                                             add_generation_prompt=True, tokenize=True, return_dict=True,
                                             **trainer.chat_template_kwargs)["input_ids"]
    return tokenizer(text=prompts)["input_ids"]


def cpu_rollout(prompts: list, trainer) -> dict:
    """GRPOTrainer's `rollout_func`: one completion per prompt (the trainer repeats each prompt num_generations times),
    cut after the first end-of-sequence token; `logprobs` None, as TRL's transformers path returns."""
    from transformers import GenerationConfig
    from trl.models import unwrap_model_for_generation

    args, tokenizer = trainer.args, trainer.processing_class
    ids = prompt_ids(prompts, trainer)
    input_ids, attention_mask = left_padded(ids, tokenizer.pad_token_id)
    width = input_ids.shape[1]
    config = GenerationConfig(max_new_tokens=args.max_completion_length, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=trainer.eos_token_ids, repetition_penalty=args.repetition_penalty,
                              cache_implementation=args.cache_implementation, disable_compile=True)
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                     gather_deepspeed3_params=args.ds3_gather_for_generation,
                                     generation_kwargs=trainer.generation_kwargs,
                                     gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs) as model, \
            torch.no_grad():
        device = model.device
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                             generation_config=config,
                             logits_processor=sampling_processors(args.temperature, args.top_k, args.top_p,
                                                                  args.min_p))
    completions = []
    eos = set(trainer.eos_token_ids)
    for row in out[:, width:].tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
        completions.append(row[:end])
    return {"prompt_ids": [list(row) for row in ids], "completion_ids": completions, "logprobs": None}
