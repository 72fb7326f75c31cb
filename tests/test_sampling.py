"""medgpt.modeling.sampling and GRPO's CPU rollouts (medgpt.training.rollout): the exponential race draws from the
same distribution as sampling in `generate()` (temperature, top-k, top-p applied first), and the rollout renders
prompts as TRL's GRPOTrainer does and cuts completions after the end-of-sequence token."""
import types

import pytest
import torch

from medgpt.modeling.sampling import ExponentialRace, sampling_processors
from medgpt.training import rollout


def test_exponential_race_draws_each_token_with_its_probability():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    rows = 40_000
    scores = probs.log().expand(rows, -1).clone()
    out = ExponentialRace()(None, scores)
    assert torch.equal((out == 0).sum(-1), torch.ones(rows, dtype=torch.long))  # one token left per row
    assert torch.isinf(out).sum() == rows * 4
    freq = torch.bincount(out.argmax(-1), minlength=5) / rows
    assert (freq - probs).abs().max() < 4 * (0.25 / rows) ** 0.5, freq  # 4 standard deviations at most


def test_generate_with_the_race_samples_softmax_of_warped_logits(tiny_dir):
    """One token from the tiny model through greedy `generate()` with sampling_processors(temperature 0.7, top-k 5):
    its frequencies are the top-5 of softmax(logits / 0.7), renormalised (what do_sample=True would draw)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    prompt = torch.tensor([[5, 17, 40, 9]])
    with torch.no_grad():
        logits = model(input_ids=prompt).logits[0, -1] / 0.7
    top = logits.topk(5)
    want = torch.zeros_like(logits).index_put_((top.indices,), top.values.softmax(-1))
    torch.manual_seed(0)
    rows = 8_000
    with torch.no_grad():
        out = model.generate(input_ids=prompt.expand(rows, -1), attention_mask=torch.ones(rows, 4, dtype=torch.long),
                             generation_config=GenerationConfig(do_sample=False, max_new_tokens=1, pad_token_id=0),
                             logits_processor=sampling_processors(temperature=0.7, top_k=5))
    freq = torch.bincount(out[:, -1], minlength=logits.numel()) / rows
    assert set(freq.nonzero().flatten().tolist()) <= set(top.indices.tolist())
    assert (freq - want).abs().max() < 4 * (0.25 / rows) ** 0.5, (freq[top.indices], want[top.indices])


def test_rollouts_apply_to_plain_cpu_generation_only():
    from transformers import ProcessorMixin

    args = types.SimpleNamespace(use_vllm=False, use_transformers_paged=False, generation_kwargs=None)
    assert rollout.applies(args, object(), cuda=False)
    assert not rollout.applies(args, object(), cuda=True)
    assert not rollout.applies(types.SimpleNamespace(**{**vars(args), "use_vllm": True}), object(), cuda=False)
    assert not rollout.applies(types.SimpleNamespace(**{**vars(args), "generation_kwargs": {"typical_p": 0.9}}),
                               object(), cuda=False)
    assert not rollout.applies(args, ProcessorMixin.__new__(ProcessorMixin), cuda=False)


@pytest.mark.parametrize("template_kwargs", [{}, {"enable_thinking": False}])
def test_cpu_rollout_renders_prompts_as_trl_and_stops_at_eos(tiny_dir, tmp_path, template_kwargs):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    prompts = [[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "发热怎么办？"}],
               [{"role": "user", "content": "What lowers blood pressure?"}]] * 2
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, num_generations=2, per_device_train_batch_size=4,
                      max_completion_length=12, report_to=[], chat_template_kwargs=template_kwargs or None)
    trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **k: [0.0] * len(completions)], args=args,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=tokenizer)
    trl_prompt_ids = trainer._tokenize_prompts(prompts)[0]  # TRL's own rendering, to compare with
    # an eighth of the vocabulary ends a completion (as a model's several end-of-turn ids do), so some end early
    trainer.eos_token_ids = eos = sorted(set(range(3, len(tokenizer), 8)) | set(trainer.eos_token_ids))
    torch.manual_seed(0)
    out = rollout.cpu_rollout(prompts, trainer)
    assert out["prompt_ids"] == [list(ids) for ids in trl_prompt_ids] and out["logprobs"] is None
    assert len(out["completion_ids"]) == len(prompts)
    for ids in out["completion_ids"]:
        assert 1 <= len(ids) <= 12
        assert not set(ids[:-1]) & set(eos) and (ids[-1] in eos or len(ids) == 12)
    assert any(len(ids) < 12 for ids in out["completion_ids"]), out["completion_ids"]


def test_cpu_rollout_draws_the_first_token_from_the_policy(tiny_dir, tmp_path):
    """Through the trainer's generation set-up (unwrap_model_for_generation, the model's own generation config), the
    rollout's first tokens follow softmax of the policy's logits: what TRL's sampling draws from."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(7)  # a peaked distribution: a few tokens carry most of the mass
    prompt = [{"role": "user", "content": "Say something about gout."}]
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, num_generations=8,
                      per_device_train_batch_size=8, max_completion_length=1, report_to=[])
    trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **k: [0.0] * len(completions)], args=args,
                          train_dataset=Dataset.from_list([{"prompt": prompt}] * 8), processing_class=tokenizer)
    ids = rollout.prompt_ids([prompt], trainer)[0]
    with torch.no_grad():
        p = model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
    torch.manual_seed(0)
    rows = 6_000
    first = torch.tensor([c[0] for c in rollout.cpu_rollout([prompt] * rows, trainer)["completion_ids"]])
    freq = torch.bincount(first, minlength=p.numel()) / rows
    top = p.topk(5).indices
    assert p[top[0]] > 0.3  # the check below has power
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / rows).sqrt() + 1e-4)[top].all(), (freq[top], p[top])
