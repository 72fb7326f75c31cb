"""stage=rm: RewardTrainer on preference pairs; final/ loads as a sequence classifier and scores a chat."""
import math

import pytest

from conftest import SAMPLES, train_in_process
from alignment_helpers import error_before_model_load, write_obvious_pairs


def score(final, messages):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    ids = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return model(**ids).logits[0, 0].item()


@pytest.mark.samples
def test_rm_trains_on_medicalgpt_pairs_and_final_scores_a_chat(tmp_path):
    run_dir, metrics = train_in_process(tmp_path, "stage=rm", f"data.train_files=[{SAMPLES / 'dpo_zh_500.jsonl'}]",
                                        "data.max_samples=24", "data.eval_split=0.25", "stage.args.max_steps=2")
    assert metrics["status"] == "completed" and metrics["global_step"] == 2
    assert metrics["formats"] == {"sharegpt_preference": 24} and metrics["eval_records"] == 6
    assert metrics["pairs"] + metrics.get("dropped_overlong", 0) == 18  # overlong pairs are counted, not hidden
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0  # pairwise accuracy is reported by eval
    value = score(run_dir / "final", [{"role": "user", "content": "头痛怎么办？"},
                                      {"role": "assistant", "content": "请及时就医。"}])
    assert math.isfinite(value)


def test_rm_learns_obvious_preference(tmp_path):
    data = write_obvious_pairs(tmp_path / "pairs.jsonl", 40)
    run_dir, metrics = train_in_process(tmp_path, "stage=rm", f"data.train_files=[{data}]", "data.eval_split=0.2",
                                        "stage.args.max_steps=12", "stage.args.learning_rate=1e-3",
                                        "stage.args.warmup_steps=0", "seed=0")
    assert metrics["eval_accuracy"] > 0.75  # chance is 0.5
    chat = [{"role": "user", "content": "How is gout treated?"}]
    good = score(run_dir / "final", chat + [{"role": "assistant", "content": "See a doctor about gout; treatment "
                                                                            "depends on the cause."}])
    bad = score(run_dir / "final", chat + [{"role": "assistant", "content": "no no no no no no no no"}])
    assert good > bad


def test_sft_data_to_preference_stage_fails_before_model_load(tmp_path, monkeypatch):
    message = error_before_model_load(monkeypatch, tmp_path, "stage=rm", "data=sft_demo")
    assert "stage=rm does not accept" in message and "sharegpt_preference, trl_preference, qa_preference" in message


def test_rm_batches_pairs_of_similar_length_and_each_pair_once(tiny_dir, tmp_path):
    """stage=rm's default batching (group_by_length over each pair's longer side): an epoch serves every pair
    exactly once, batch size unchanged, with less padding than TRL's random order over the same pairs."""
    import json

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig

    from medgpt.data.formats import sharegpt_preference
    from medgpt.stages.dpo import preference_dataset
    from medgpt.stages.rm import trainer_class

    with open(SAMPLES / "dpo_zh_500.jsonl", encoding="utf-8") as f:
        rows = [sharegpt_preference(json.loads(line)) for _, line in zip(range(64), f)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    padding = {}
    for batching in ("group_by_length", "random"):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, max_length=1024,
                            report_to=[], seed=0)
        trainer = trainer_class()(model=model, args=args, train_dataset=preference_dataset(rows),
                                  processing_class=tokenizer, batching=batching, batch_seed=0)
        seen, real, padded = [], 0, 0
        sizes = []
        for batch in trainer.get_train_dataloader():
            pairs = batch["input_ids"].shape[0] // 2  # chosen rows, then rejected rows
            sizes.append(pairs)
            real += int(batch["attention_mask"].sum())
            padded += batch["attention_mask"].numel()
            seen += [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"][:pairs],
                                                                           batch["attention_mask"][:pairs])]
        assert len(seen) > 12 and sorted(sizes)[1:] == [4] * (len(sizes) - 1)  # one batch may hold the remainder
        assert sorted(seen) == sorted(tuple(ids) for ids in trainer.train_dataset["chosen_ids"])
        padding[batching] = 1 - real / padded
    assert padding["group_by_length"] < 0.75 * padding["random"], padding  # pair-internal padding remains
