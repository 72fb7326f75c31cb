"""Evaluation: multiple-choice accuracy, generative QA, perplexity and preference accuracy of a model, in the same
config system as training (stage=eval, or eval_after_train=true), plus a comparison table across runs.

    python train.py stage=eval model.path=<run folder> data=eval_demo
    python train.py stage=eval eval=medical_zh model.path=<run folder>      # a public-benchmark suite
    python train.py stage=sft eval_after_train=true eval.files=[medgpt/demo_data/mcq_demo.jsonl]
    medgpt eval compare outputs/runs/eval-tiny-cpu/* --sort=-mcq_accuracy
"""
