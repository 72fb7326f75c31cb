"""Vocabulary extension: learn a BPE vocabulary on a domain corpus, merge its new tokens into the base tokenizer
(base ids unchanged, no duplicates), grow the embeddings (new rows = mean of the old rows) and save a model folder
that PT/SFT start from.

    medgpt vocab --corpus ../shared/data/medicalgpt-samples/medical_corpus.txt --base tiny \
        --output outputs/tiny-medvocab --vocab-size 2000
    python train.py stage=pt model.path=outputs/tiny-medvocab hardware=lora      # embeddings train fully

The domain tokenizer is trained with the base tokenizer's own normalizer and pre-tokenizer
(`train_new_from_iterator`), so its tokens live in the same alphabet; each new token enters with the merge rule that
builds it, ranked after every base merge (base merges always apply first).
LoRA runs on an extended model train the embedding (and an untied lm_head) as modules_to_save, since the new rows
start untrained: see `medgpt.modeling.load.trainable_embeddings`.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Dict, Iterable, List

from medgpt.errors import UserError, command
from medgpt.modeling.load import (LoadPolicy, add_consent_flags, check_source, hub_source, load_failure,
                                 resolve_path)
from medgpt.runs import EXTENDED_VOCAB, run_info, write_run_info

log = logging.getLogger(__name__)


def corpus_texts(path: str) -> List[str]:
    """Lines of a text file; a line holding a JSON object contributes its string values (e.g. 问/答 pairs)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--corpus {path}: no such file")
    texts = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                texts += [v for v in json.loads(line).values() if isinstance(v, str) and v.strip()]
                continue
            except json.JSONDecodeError:
                pass
        if line:
            texts.append(line)
    if not texts:
        raise UserError(f"--corpus {path}: no text in it")
    return texts


def merge_bpe(base_json: dict, domain_json: dict, first_id: int) -> List[str]:
    """Append the domain BPE's tokens missing from the base (with the merges that build them) to base_json, in
    domain merge order, ids from first_id on. Returns the new tokens. Edits base_json in place."""
    base, domain = base_json["model"], domain_json["model"]
    if base.get("type") != "BPE" or domain.get("type") != "BPE":
        raise UserError(f"vocabulary extension merges BPE tokenizers; this base uses {base.get('type')}")
    vocab, merges = base["vocab"], base["merges"]
    taken = set(vocab) | {t["content"] for t in base_json.get("added_tokens", [])}
    new_tokens: List[str] = []
    for merge in domain["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token = left + right
        if token in taken or left not in vocab or right not in vocab:
            continue  # already known, or built from a piece the base cannot produce
        vocab[token] = first_id + len(new_tokens)
        merges.append([left, right] if not isinstance(merges[0], str) else f"{left} {right}")
        taken.add(token)
        new_tokens.append(token)
    return new_tokens


def extend_tokenizer(tokenizer, texts: Iterable[str], vocab_size: int):
    """-> (extended tokenizer, new tokens). Base ids are unchanged; new ids follow every existing id."""
    from tokenizers import Tokenizer

    if not tokenizer.is_fast:
        raise UserError("vocabulary extension needs a fast (tokenizers) tokenizer")
    texts = list(texts)
    domain = tokenizer.train_new_from_iterator(texts, vocab_size=vocab_size)
    base_json = json.loads(tokenizer.backend_tokenizer.to_str())
    new_tokens = merge_bpe(base_json, json.loads(domain.backend_tokenizer.to_str()), first_id=len(tokenizer))
    extended = tokenizer.__class__(tokenizer_object=Tokenizer.from_str(json.dumps(base_json)),
                                   **_init_kwargs(tokenizer))
    return extended, new_tokens


def _init_kwargs(tokenizer) -> dict:
    keep = {k: v for k, v in tokenizer.init_kwargs.items()
            if k not in ("tokenizer_object", "tokenizer_file", "vocab_file", "merges_file", "vocab", "merges",
                         "name_or_path", "added_tokens_decoder")}
    keep.update(tokenizer.special_tokens_map)
    keep["chat_template"] = tokenizer.chat_template
    return keep


def resize_with_mean(model, new_size: int) -> None:
    """Grow input (and untied output) embeddings to new_size rows; new rows = mean of the existing rows."""
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(new_size, mean_resizing=False)
    with torch.no_grad():
        layers = [model.get_input_embeddings()]
        output = model.get_output_embeddings()
        if output is not None and output.weight is not layers[0].weight:
            layers.append(output)
        for layer in layers:
            layer.weight[old:] = layer.weight[:old].mean(dim=0, keepdim=True)


def tokens_per_text(tokenizer, texts: List[str]) -> float:
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) / len(texts)


def extend(corpus: str, base: str, output: str, vocab_size: int,
           policy: LoadPolicy = LoadPolicy()) -> Dict[str, float]:
    """The command: extend base's vocabulary from corpus and save model + tokenizer to output. The base loads under
    medgpt's loading policy (medgpt.modeling.load.LoadPolicy: its own code and pickle weights only on consent)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = corpus_texts(corpus)
    path = hub_source(resolve_path(base), what="--base")
    check_source(path, policy, what="--base")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=policy.trust_remote_code)
        extended, new_tokens = extend_tokenizer(tokenizer, texts, vocab_size)
        if not new_tokens:
            raise UserError(f"--vocab-size {vocab_size}: the corpus taught no token the base lacks; raise it")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=policy.trust_remote_code,
                                                     use_safetensors=None if policy.allow_pickle else True)
    except (OSError, ValueError) as e:
        raise load_failure(e, "--base", path, policy) from None
    resize_with_mean(model, len(extended))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    extended.save_pretrained(out)
    report = {"base": base, "base_vocab": len(tokenizer), "new_tokens": len(new_tokens), "vocab": len(extended),
              "tokens_per_text_before": round(tokens_per_text(tokenizer, texts), 2),
              "tokens_per_text_after": round(tokens_per_text(extended, texts), 2)}
    info = {**run_info(path), EXTENDED_VOCAB: report}
    write_run_info(out, info)
    return report


@command
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="medgpt vocab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="domain text: .txt lines, or JSON lines (string values used)")
    parser.add_argument("--base", required=True, help="model folder, run folder, hub id, or tiny")
    parser.add_argument("--output", required=True, help="folder for the extended model + tokenizer")
    parser.add_argument("--vocab-size", type=int, required=True, help="size of the domain BPE vocabulary to learn")
    add_consent_flags(parser, "the base model's")
    args = parser.parse_args(argv)
    report = extend(args.corpus, args.base, args.output, args.vocab_size,
                    LoadPolicy.of_args(args))
    print(json.dumps(report, indent=1, ensure_ascii=False))
    print(f"train on it: python train.py stage=pt model.path={args.output}")
