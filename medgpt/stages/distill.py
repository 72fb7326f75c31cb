"""On-policy distillation (trl.DistillationTrainer, the GKD objective of arXiv:2306.13649): the student (model.path)
samples completions to the data's prompts and is trained to match the teacher's next-token distribution on them
(generalised Jensen-Shannon divergence: stage.args.beta=0 forward KL, 0.5 JSD, 1 reverse KL).

    python train.py stage=distill model.path=<sft run> stage.teacher=<hub id | folder | run folder> data=medical_grpo

The teacher loads like any model (medgpt.modeling.load: safetensors only unless allow_pickle, remote code only with
model.trust_remote_code, a LoRA run merged onto its base), frozen and never adapted; student and teacher must share
a tokenizer, checked before any model loads. With hardware=lora the student trains an adapter.
"""
from __future__ import annotations

import logging
from collections import Counter

from omegaconf import OmegaConf

from medgpt.errors import UserError
from medgpt.modeling.load import load_model, load_tokenizer, resolve_path
from medgpt.stages.grpo import check_generation_backend, prompt_dataset
from medgpt.training.guard import guarded

log = logging.getLogger("medgpt")
MODEL_KIND = "causal"
CACHEABLE = False  # prepare() does more than tokenize (pairs, prompts): prepared afresh each run


def teacher_nodes(cfg):
    """(model node, hardware node) to load the teacher with: the student's model node (template, remote-code
    consent, tiny shape) at stage.teacher, merged if it is an adapter; full weights, no LoRA, no quantization."""
    if not cfg.stage.teacher:
        raise UserError("stage=distill needs a teacher: stage.teacher=<hub id, model folder or run folder> "
                        "(it must share the student's tokenizer)")
    model = OmegaConf.merge(cfg.model, {"path": str(cfg.stage.teacher), "adapter_merge": True})
    hardware = OmegaConf.merge(cfg.hardware, {"method": "full", "quantization": None, "deepspeed": None,
                                              "gradient_checkpointing": False})
    return model, hardware


def check_same_tokenizer(cfg, tokenizer) -> None:
    """Distillation compares distributions token by token: the teacher's vocabulary must be the student's."""
    teacher_model, _ = teacher_nodes(cfg)
    teacher_tokenizer = load_tokenizer(teacher_model)
    student_vocab, teacher_vocab = tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab != teacher_vocab:
        differ = len(set(student_vocab.items()) ^ set(teacher_vocab.items()))
        raise UserError(f"stage.teacher={cfg.stage.teacher} ({resolve_path(teacher_model.path, teacher_model.tiny)}, "
                        f"{len(teacher_vocab)} tokens) and the student model.path={cfg.model.path} "
                        f"({len(student_vocab)} tokens) do not share a tokenizer ({differ} token ids differ): "
                        f"distillation compares their next-token distributions id by id; pick a teacher of the "
                        f"student's family")


def prepare(rows, tokenizer, cfg, settings):
    check_same_tokenizer(cfg, tokenizer)
    check_generation_backend(cfg.stage.args, settings)
    return prompt_dataset(rows), Counter(prompts=len(rows))


def load_teacher(cfg, settings, tokenizer):
    """The teacher through medgpt's one loader (same trust policy as the student), frozen, in eval mode."""
    model_node, hardware_node = teacher_nodes(cfg)
    teacher = load_model(model_node, hardware_node, settings, kind="causal", tokenizer=tokenizer,
                         allow_pickle=cfg.allow_pickle)
    teacher.eval().requires_grad_(False)
    log.info("teacher: %s (%d parameters)", resolve_path(model_node.path, model_node.tiny),
             sum(p.numel() for p in teacher.parameters()))
    return teacher


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
    from trl import DistillationTrainer

    return guarded(DistillationTrainer)(model=model, teacher_model=load_teacher(cfg, settings, tokenizer), args=args,
                                        train_dataset=train_dataset, eval_dataset=eval_dataset,
                                        processing_class=tokenizer, callbacks=callbacks)
