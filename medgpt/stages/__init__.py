"""One module per stage. Each exposes:

    MODEL_KIND = "causal" | "reward"
    prepare(rows, tokenizer, cfg) -> (datasets.Dataset, counts)     # normalised records -> what the trainer eats
    build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks) -> Trainer

and medgpt.run does the rest (data, model, args, tracking, saving).
"""
