"""Vocabulary extension on the tiny model with MedicalGPT's medical corpus sample: fewer tokens per text, base ids
unchanged, mean-initialised rows, PT + LoRA trains the embeddings, and merging the adapter keeps the new size."""
import json

import pytest
import torch

from conftest import SAMPLES, train_in_process

CORPUS = SAMPLES / "medical_corpus.txt"


@pytest.fixture(scope="module")
def extended(tmp_path_factory, tiny_dir):
    from medgpt.modeling.vocab import extend

    out = tmp_path_factory.mktemp("medvocab")
    report = extend(str(CORPUS), "tiny", str(out), vocab_size=2000)
    return out, report


@pytest.mark.samples
def test_corpus_reads_question_answer_json_lines():
    from medgpt.modeling.vocab import corpus_texts

    texts = corpus_texts(str(CORPUS))
    first = json.loads(CORPUS.read_text(encoding="utf-8").splitlines()[0])
    assert texts[:2] == [first["问"], first["答"]]


@pytest.mark.samples
def test_new_tokens_appended_without_touching_base_ids(extended, tiny_tokenizer):
    from transformers import AutoTokenizer

    out, report = extended
    tok = AutoTokenizer.from_pretrained(out)
    base_vocab, vocab = tiny_tokenizer.get_vocab(), tok.get_vocab()
    assert all(vocab[token] == i for token, i in base_vocab.items())  # old ids unchanged
    assert len(set(vocab.values())) == len(vocab) == len(tok)  # no duplicate tokens or ids
    assert sorted(set(vocab.values()) - set(base_vocab.values())) == list(range(len(base_vocab), len(vocab)))
    assert report["new_tokens"] == len(tok) - len(tiny_tokenizer) > 0
    assert tok.chat_template == tiny_tokenizer.chat_template and tok.eos_token == tiny_tokenizer.eos_token


@pytest.mark.samples
def test_medical_text_takes_fewer_tokens_and_round_trips(extended, tiny_tokenizer):
    from transformers import AutoTokenizer

    from medgpt.modeling.vocab import corpus_texts, tokens_per_text

    out, report = extended
    tok = AutoTokenizer.from_pretrained(out)
    texts = corpus_texts(str(CORPUS))
    assert tokens_per_text(tok, texts) < 0.8 * tokens_per_text(tiny_tokenizer, texts)
    assert report["tokens_per_text_after"] < report["tokens_per_text_before"]
    for text in texts[:20]:
        assert tok.decode(tok(text)["input_ids"]) == text


@pytest.mark.samples
def test_new_embedding_rows_are_the_mean_of_old_rows(extended, tiny_dir):
    from transformers import AutoModelForCausalLM

    out, report = extended
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).get_input_embeddings().weight
    new = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight
    assert new.shape[0] == report["vocab"]
    torch.testing.assert_close(new[:base.shape[0]], base)
    torch.testing.assert_close(new[base.shape[0]:], base.mean(0, keepdim=True).expand(new.shape[0] - base.shape[0], -1))


@pytest.mark.samples
def test_pt_with_lora_trains_embeddings_and_merge_keeps_vocab(extended, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, report = extended
    run_dir, metrics = train_in_process(tmp_path, "stage=pt", f"model.path={out}", "hardware=lora",
                                        "stage.args.max_steps=3", "stage.args.learning_rate=0.01",
                                        "data.block_size=64")
    assert metrics["status"] == "completed" and metrics["train_loss"] > 0
    final = run_dir / "final"
    assert "embed_tokens" in json.loads((final / "adapter_config.json").read_text())["modules_to_save"]
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out), final).merge_and_unload()
    before = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight
    assert merged.get_input_embeddings().weight.shape == before.shape
    assert not torch.equal(merged.get_input_embeddings().weight, before)  # the embedding itself was trained
    torch.testing.assert_close(merged.get_output_embeddings().weight, merged.get_input_embeddings().weight)  # tied
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert reloaded.config.vocab_size == report["vocab"] == len(AutoTokenizer.from_pretrained(final))
    assert reloaded.get_input_embeddings().weight.shape[0] == report["vocab"]


def test_cli_refuses_a_missing_corpus(tmp_path, capsys):
    from medgpt.modeling.vocab import main

    status = main(["--corpus", str(tmp_path / "none.txt"), "--base", "tiny", "--output", str(tmp_path / "o"),
                   "--vocab-size", "100"])
    assert status == 2 and "no such file" in capsys.readouterr().err and not (tmp_path / "o").exists()
