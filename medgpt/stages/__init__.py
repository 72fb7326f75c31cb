"""One module per stage. Each exposes:

    MODEL_KIND = "causal" | "reward"
    prepare(rows, tokenizer, cfg) -> (datasets.Dataset, counts)     # normalised records -> what the trainer eats
    build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks) -> Trainer

and medgpt.training.run does the rest (data, model, args, tracking, saving). A stage that does not train (eval) exposes
instead `load(cfg) -> records` (before the model), `model_kind(cfg)` and `run(cfg, run_dir, model, tokenizer,
records) -> metrics`; its stage.args is empty.
"""
