"""The memory-bounded LM head (medgpt.training.fused_loss): same loss, log-probabilities and gradients as full
logits, a chunk of rows at a time; through SFT's labelled loss (tied embeddings, LoRA, checkpointing, the real Qwen3
vocabulary) and the trainers' `fused_lm_head=True` contract (DPO, KTO; GRPO at its sampling temperature)."""
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import official, train_in_process
from medgpt.training import fused_loss
from medgpt.training.fused_loss import linear_cross_entropy, linear_log_probs
from medgpt.training.losses import add_labelled_lm_head, labelled_positions_loss


def _grads(tensors):
    out = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


@pytest.mark.parametrize("bias", [False, True])
def test_chunked_cross_entropy_and_log_probs_equal_full_logits(bias):
    torch.manual_seed(0)
    h = torch.randn(50, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)
    b = torch.randn(300, requires_grad=True) if bias else None
    t = torch.randint(0, 300, (50,))
    leaves = [x for x in (h, w, b) if x is not None]
    logits = F.linear(h, w, b)
    (0.5 * F.cross_entropy(logits, t, reduction="sum")).backward()
    reference = _grads(leaves)
    loss = linear_cross_entropy(h, w, b, t, chunk_rows=7)  # 8 chunks, the last one short
    (0.5 * loss).backward()
    torch.testing.assert_close(loss, F.cross_entropy(logits, t, reduction="sum"), rtol=1e-6, atol=1e-4)
    for got, want in zip(_grads(leaves), reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    weights = torch.randn(50)  # per-token gradient, as a DPO loss sends back
    logp = torch.log_softmax(F.linear(h, w, b), -1)
    (logp.gather(1, t[:, None]).squeeze(1) * weights).sum().backward()
    reference = _grads(leaves)
    got, entropy, mean_logits, is_top1, log_sum_sq = linear_log_probs(
        h, w, b, t, chunk_rows=7, metrics=("entropy", "mean_logits", "is_top1", "log_sum_sq_probs"))
    (got * weights).sum().backward()
    torch.testing.assert_close(got, logp.gather(1, t[:, None]).squeeze(1), rtol=1e-5, atol=1e-5)
    for g, want in zip(_grads(leaves), reference):
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)
    p = logp.exp().detach()
    torch.testing.assert_close(entropy, -(p * logp.detach()).sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean_logits, F.linear(h, w, b).mean(-1).detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(is_top1, logp.argmax(-1) == t)
    torch.testing.assert_close(log_sum_sq, (p * p).sum(-1).log(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["full", "checkpointing"])  # LoRA: tests/test_lm_head.py (tied too)
def test_sft_loss_at_the_real_qwen3_vocabulary_with_tied_embeddings(variant, monkeypatch):
    """The tiny model around the official Qwen3 tokenizer (151,669 tokens, embeddings tied to the LM head): the
    chunked labelled loss equals the model's own full-logits loss, gradients included (the tied matrix gets both the
    embedding's and the head's share)."""
    from transformers import AutoModelForCausalLM

    folder = official("qwen3", model=True)
    monkeypatch.setattr(fused_loss, "CHUNK_ELEMENTS", 151_669 * 5)  # 5 rows a chunk: several chunks here
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    if variant == "checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(0, 151_669, (2, 16))
    labels = ids.clone()
    labels[:, :6] = -100
    labels[1, 13:] = -100
    trained = [p for p in model.parameters() if p.requires_grad]
    reference = model(input_ids=ids, labels=labels).loss
    reference.backward()
    want = _grads(trained)
    loss = labelled_positions_loss(model, {"input_ids": ids, "labels": labels})
    loss.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    for got, expected in zip(_grads(trained), want):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_log_probs_at_a_temperature_equal_full_logits():
    """GRPO scores completions at the sampling temperature: log softmax(logits / T), gradients included."""
    torch.manual_seed(0)
    h, w = torch.randn(20, 16, requires_grad=True), torch.randn(300, 16, requires_grad=True)
    t, weights = torch.randint(0, 300, (20,)), torch.randn(20)
    logp = torch.log_softmax(F.linear(h, w) / 0.6, -1)
    (logp.gather(1, t[:, None]).squeeze(1) * weights).sum().backward()
    reference = _grads([h, w])
    got, entropy = linear_log_probs(h, w, None, t, chunk_rows=6, metrics=("entropy",), temperature=0.6)
    (got * weights).sum().backward()
    torch.testing.assert_close(got, logp.gather(1, t[:, None]).squeeze(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, -(logp.exp() * logp).sum(-1).detach(), rtol=1e-5, atol=1e-5)
    for g, want in zip(_grads([h, w]), reference):
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_labelled_head_gives_trls_log_probs_and_gradients(tiny_dir, temperature):
    """The trainers' contract, `model(..., labels, fused_lm_head=True)`: medgpt's head (completion positions only)
    returns what TRL's head returns, log-probabilities, metrics and gradients; at GRPO's sampling temperature too."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
    models = []
    for ours in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
        add_fused_lm_head(model, temperature=temperature, outputs=outputs)
        assert add_labelled_lm_head(model, metrics=outputs[1:], temperature=temperature) if ours else True
        models.append(model.train())
    ids = torch.randint(5, 1000, (4, 10))
    mask = torch.ones_like(ids)
    mask[3, 8:] = 0  # right padding
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100  # the prompt
    results = []
    for model in models:
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        (out.log_probs.sum(1) * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (trl_out, trl_grads), (our_out, our_grads) = results
    for field in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(our_out, field), getattr(trl_out, field), rtol=1e-5, atol=1e-5)
    assert torch.equal(our_out.is_top1, trl_out.is_top1) and torch.equal(our_out.label_mask, trl_out.label_mask)
    for name, grad in trl_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    plain = models[1](input_ids=ids)  # without fused_lm_head: the model's own forward, logits as before
    assert plain.logits.shape == (*ids.shape, models[1].config.vocab_size)


PREFERENCE_METRICS = ("rewards/chosen", "rewards/margins", "logps/chosen", "logits/chosen", "nll_loss")


@pytest.mark.parametrize("stage", ["dpo", "kto", "orpo", "simpo"])
def test_preference_stages_train_the_same_with_medgpts_head(tmp_path, monkeypatch, stage):
    """stage=dpo/kto/orpo/simpo through train.py's path: medgpt's head is on by default (its chunked log-probs run),
    and the logged losses and metrics over two steps are those of the trainer's own head."""
    import importlib

    from medgpt.training import losses

    module = importlib.import_module(f"medgpt.stages.{stage}")
    logged = {}
    for ours in (True, False):
        monkeypatch.setattr(module, "labelled_loss_applies", lambda *a, ours=ours: ours)
        calls = []
        original = losses.linear_log_probs
        monkeypatch.setattr(losses, "linear_log_probs", lambda *a, **k: calls.append(1) or original(*a, **k))
        run_dir, metrics = train_in_process(tmp_path / str(ours), f"stage={stage}", "data.max_samples=8",
                                            "data.eval_split=0", "stage.args.max_steps=2",
                                            "stage.args.logging_steps=1", "stage.args.per_device_train_batch_size=2",
                                            "stage.args.learning_rate=1e-3")
        assert metrics["status"] == "completed"
        assert bool(calls) == ours
        history = json.loads((run_dir / "history.json").read_text())["log_history"]
        logged[ours] = [{k: h[k] for k in ("loss",) + PREFERENCE_METRICS if k in h} for h in history if "loss" in h]
    assert len(logged[True]) == 2 and len(logged[True][0]) >= 3, logged
    for a, b in zip(logged[True], logged[False]):
        assert a.keys() == b.keys()
        for key in a:
            assert abs(a[key] - b[key]) < 1e-4 * max(1, abs(b[key])), (key, logged)


def test_trls_own_head_stays_where_it_is_compact(monkeypatch):
    """On CUDA with Triton, TRL's head already scores only labelled positions (its Triton kernels): medgpt's
    preference trainers keep it there (not compared on a GPU yet); on CPU medgpt's head replaces it."""
    import transformers.utils

    from medgpt.training.losses import trl_head_compacts

    monkeypatch.setattr(transformers.utils, "is_triton_available", lambda: True)
    assert trl_head_compacts(torch.device("cuda")) and not trl_head_compacts(torch.device("cpu"))
    monkeypatch.setattr(transformers.utils, "is_triton_available", lambda: False)
    assert not trl_head_compacts(torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_liger_kernel_gives_the_chunked_loss_on_cuda(monkeypatch):
    """On CUDA with liger-kernel installed (`pip install medgpt[liger]`; run by `bash bench/gpu_check.sh liger`), SFT's
    summed loss is Liger's fused linear cross-entropy: the loss and gradients of medgpt's chunked one, at Qwen3's
    vocabulary."""
    pytest.importorskip("liger_kernel")
    liger, calls = fused_loss._liger(), []
    monkeypatch.setattr(fused_loss, "_liger", lambda: lambda *a, **k: calls.append(1) or liger(*a, **k))
    torch.manual_seed(0)
    h = torch.randn(300, 64, device="cuda", requires_grad=True)
    w = (torch.randn(151_669, 64, device="cuda") * 0.05).requires_grad_()
    t = torch.randint(0, 151_669, (300,), device="cuda")
    loss = linear_cross_entropy(h, w, None, t)
    loss.backward()
    assert calls == [1]
    got = _grads([h, w])
    reference = fused_loss.LinearCrossEntropy.apply(h, w, None, t, 64, True)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-4, atol=1e-3)
    for g, want in zip(got, _grads([h, w])):
        torch.testing.assert_close(g, want, rtol=1e-3, atol=1e-5)
