"""One module per stage, named by conf/stage/<name>.yaml's `module:`. Each implements the protocol of its stage's
`kind` (medgpt/training/stage.py): TrainingStage (MODEL_KIND, CACHEABLE, prepare, build_trainer) or, for
kind: eval, EvaluationStage (load, model_kind, run). medgpt.training.run does the rest: settings, data, model,
trainer args, callbacks, tracking, saving. Read lengths and seeds from `settings` (medgpt.config.resolve), not cfg.

    python train.py stage=dpo --cfg job          # the stage node a run gets
"""
