"""One module per stage. Each exposes:

    MODEL_KIND = "causal" | "reward"
    prepare(rows, tokenizer, cfg, settings) -> (datasets.Dataset, counts)  # records -> what the trainer eats
    build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings) -> Trainer

and medgpt.training.run does the rest (data, model, args, tracking, saving). `settings` is the run's RunSettings
(medgpt.config.resolve: max_length, seeds, tokens per batch, ...): read lengths and seeds there, not in cfg. A stage
that does not train (eval) exposes instead `load(cfg) -> records` (before the model), `model_kind(cfg)` and
`run(cfg, run_dir, model, tokenizer, records, settings) -> metrics`; its stage.args is empty.
"""
