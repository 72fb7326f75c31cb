"""Batching strategies are correct (every sample once, budgets kept, seeded), and packed rows stay isolated."""
import random

import pytest
import torch

from conftest import SAMPLES
from medgpt.training.batching import (BatchPlan, drop_causal_padding_mask, length_grouped_batches, pad_collate,
                             padding_fraction, plan_batches, random_batches, token_budget_batches)


@pytest.fixture(scope="module")
def sample_lengths(tiny_tokenizer):
    from medgpt.data.loading import expand_files, load_split
    from medgpt.data.tokenize import tokenize_chats

    rows = load_split(expand_files([str(SAMPLES / "medical_sft_1K_format.jsonl")]),
                      accepted=["sharegpt"], max_samples=300).rows
    columns, _ = tokenize_chats(rows, tiny_tokenizer, 512, "truncate")
    return [len(x) for x in columns["input_ids"]]


@pytest.mark.samples
def test_every_sample_once_and_budget_kept(sample_lengths):
    batches = token_budget_batches(sample_lengths, 2048, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(len(sample_lengths)))
    for b in batches:
        assert max(sample_lengths[i] for i in b) * len(b) <= 2048 or len(b) == 1
    # short samples share big batches, long ones small: batch sizes vary
    assert len({len(b) for b in batches}) > 2


@pytest.mark.samples
def test_grouping_removes_padding_that_random_batches_waste(sample_lengths):
    rng = random.Random(0)
    rand = padding_fraction(sample_lengths, random_batches(len(sample_lengths), 4, rng))
    grouped = padding_fraction(sample_lengths, length_grouped_batches(sample_lengths, 4, rng))
    budget = padding_fraction(sample_lengths, token_budget_batches(sample_lengths, 2048, rng))
    assert rand > 0.2 and grouped < 0.05 and budget < 0.05, (rand, grouped, budget)


@pytest.mark.samples
def test_plan_is_seeded_and_reshuffled_per_epoch(sample_lengths):
    a = plan_batches("token_budget", sample_lengths, 4, 2048, seed=3)
    b = plan_batches("token_budget", sample_lengths, 4, 2048, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert first != second and sorted(map(tuple, first)) == sorted(map(tuple, second)) and len(a) == len(first)


def test_pad_collate_masks_padding():
    batch = pad_collate([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}], 0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_batches_without_the_padding_mask_can_be_pinned():
    """On a GPU box the DataLoader pins every batch tensor: it allocates one with the tensor's strides and copies
    into it, which fails for a stride-0 (expanded) view. That stopped every SFT run on CUDA at its first batch."""
    batch = drop_causal_padding_mask(pad_collate([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]},
                                                  {"input_ids": [4], "labels": [4]}], 0))
    assert "attention_mask" not in batch and batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]
    for tensor in batch.values():
        torch.empty_strided(tensor.size(), tensor.stride()).copy_(tensor)  # what pin_memory does


def test_packed_rows_do_not_attend_across_samples(tiny_dir):
    """Two samples packed into one row with position_ids restarting (no attention mask, no cache) give the same
    logits as each sample alone: no cross-sample attention."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    a, b = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[10, 11, 12]])
    packed = torch.cat([a, b], dim=1)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=position_ids, use_cache=False).logits
        alone_a = model(input_ids=a, use_cache=False).logits
        alone_b = model(input_ids=b, use_cache=False).logits
    torch.testing.assert_close(together[:, :5], alone_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together[:, 5:], alone_b, atol=1e-5, rtol=1e-4)


def _sft_trainer(tmp_path, **args):
    from trl import SFTConfig

    from conftest import compose
    from medgpt.config import resolve
    from medgpt.modeling.load import load_model, load_tokenizer
    from medgpt.training.run import prepare_datasets
    from medgpt.stages import sft

    cfg = compose("stage.args.max_steps=1", "stage.tokens_per_batch=512", "data.eval_split=0")
    settings = resolve(cfg, {"cuda": False, "bf16": False})
    tokenizer = load_tokenizer(cfg.model)
    train, _, _ = prepare_datasets(cfg, sft, tokenizer, settings)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                     per_device_train_batch_size=4, **args)
    model = load_model(cfg.model, cfg.hardware, settings, tokenizer=tokenizer)
    return sft.build_trainer(cfg, model, tokenizer, args, train, None, [], settings), train


def test_sft_trainer_uses_the_batch_plan(tmp_path):
    trainer, train = _sft_trainer(tmp_path)
    assert trainer.labelled_loss  # the default loss: labelled positions only (medgpt.training.losses)
    assert isinstance(trainer.batch_plan, BatchPlan)
    sizes = [batch["input_ids"].shape for batch in trainer.get_train_dataloader()]
    assert sum(s[0] for s in sizes) == len(train)
    assert all(s[0] * s[1] <= 512 for s in sizes) and max(s[0] for s in sizes) > 4


def test_a_compiled_sft_model_keeps_the_models_own_loss(tmp_path):
    trainer, _ = _sft_trainer(tmp_path, torch_compile=True)  # the labelled loss would call the body uncompiled
    assert not trainer.labelled_loss


def test_right_padding_mask_is_redundant_under_causal_attention(tiny_dir):
    """Dropping the mask of a right-padded batch changes no loss: pads only follow real tokens."""
    from transformers import AutoModelForCausalLM

    from medgpt.training.batching import drop_causal_padding_mask

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    batch = pad_collate([{"input_ids": list(range(5, 17)), "labels": [-100] * 4 + list(range(9, 17))},
                         {"input_ids": list(range(20, 25)), "labels": [-100, -100, 22, 23, 24]}], 0)
    fast = drop_causal_padding_mask(batch)
    assert "attention_mask" not in fast and fast["position_ids"].tolist()[1] == list(range(12))
    with torch.no_grad():
        torch.testing.assert_close(model(**fast).loss, model(**batch).loss, atol=1e-6, rtol=1e-5)
    left = {**batch, "attention_mask": torch.tensor([[1] * 12, [0] * 7 + [1] * 5])}
    assert "attention_mask" in drop_causal_padding_mask(left)  # left padding keeps its mask
