"""The one way to load a model and tokenizer: hub id, local folder, a run's final/ (full weights or a LoRA
adapter on its base) or the embedded tiny model; chat template installed; LoRA/QLoRA/freeze applied.

    python -c "from medgpt.modeling.load import resolve_path; print(resolve_path('tiny'))"
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

from medgpt.config import RunSettings
from medgpt.errors import UserError
from medgpt.modeling import hardware, longcontext
from medgpt.modeling.attention import register
from medgpt.modeling.hardware import check_attention, device_info, quantization_config
from medgpt.modeling.templates import end_of_turn, load_template, stop_tokens
from medgpt.modeling.tiny import tiny_path
from medgpt.runs import (ADAPTER_FILE, EXTENDED_VOCAB, GENERATION_CONFIG, MODEL_CONFIG, adapter_base,
                         check_weights, final_if_run, holds_model, run_info)

log = logging.getLogger(__name__)


def resolve_path(path: str, tiny: Optional[dict] = None) -> str:
    """'tiny' -> the cached embedded model; a run folder -> its final/; anything else as given (hub id or folder)."""
    if path == "tiny":
        return str(tiny_path(**(tiny or {})))
    p = Path(path).expanduser()
    final = final_if_run(p)
    if final:
        return str(final)
    if p.is_file():
        raise UserError(f"model.path={path} is a file, not a model folder; point it at the folder that holds "
                        f"{MODEL_CONFIG} and the weights (perhaps model.path={p.parent})")
    if p.exists() and p.is_dir() and not holds_model(p):
        raise UserError(f"model.path={path} is a folder but holds no model (no {MODEL_CONFIG} or {ADAPTER_FILE}); "
                        f"point it at a run's final/ folder or a model folder")
    if not p.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise UserError(f"model.path={path}: no such folder")
    return str(p) if p.exists() else path


def load_tokenizer(model_cfg, path: Optional[str] = None):
    """Tokenizer with the model config's chat template installed (so every saved final/ carries it)."""
    from transformers import AutoTokenizer

    path = path or resolve_path(model_cfg.path, model_cfg.tiny)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    except OSError as e:
        raise UserError(f"model.path={model_cfg.path}: cannot load a tokenizer from {path} ({e})") from None
    tokenizer.chat_template = load_template(model_cfg.template)
    eot = end_of_turn(model_cfg.template)
    if eot not in tokenizer.get_vocab():
        raise UserError(f"model.template={model_cfg.template} ends turns with {eot}, which the tokenizer of "
                        f"{model_cfg.path} does not know; choose the template of this model family")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or eot
    return tokenizer


def _check_cuda_features(model_cfg, hw) -> None:
    import torch

    if hw.quantization and not torch.cuda.is_available():  # bitsandbytes >= 0.45 ships a CPU backend: QLoRA runs
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError(f"hardware.quantization={hw.quantization} without a CUDA GPU needs bitsandbytes>=0.45 "
                            f"(its CPU backend): pip install bitsandbytes, or use hardware=cpu / hardware=lora "
                            f"(no quantization)") from None
    check_attention(model_cfg.attn_implementation, device_info())
    if model_cfg.attn_implementation == "medgpt_varlen":
        register()


def load_model(model_cfg, hw, settings: RunSettings, *, kind: str = "causal", tokenizer=None,
               allow_pickle: bool = False):
    """Load for training. kind: causal | reward (sequence classification, 1 label). Applies freeze/LoRA/QLoRA.
    settings (medgpt.config.resolve): precision, LoRA targets, gradient checkpointing, max_length (RoPE auto)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    _check_cuda_features(model_cfg, hw)
    path = resolve_path(model_cfg.path, model_cfg.tiny)
    base = adapter_base(path)
    for folder in filter(None, (path, base)):
        check_weights(folder, allow_pickle)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[settings.precision]
    if model_cfg.dtype != "auto":
        dtype = getattr(torch, model_cfg.dtype)
    kwargs = dict(dtype=dtype, trust_remote_code=model_cfg.trust_remote_code,
                  use_safetensors=None if allow_pickle else True)  # pickle weights only with allow_pickle=true
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    quant = hardware.quantization_config(hw, compute_dtype=dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": _local_device()}
    kwargs.update(longcontext.load_kwargs(model_cfg, base or path, settings.max_length))  # rope scaling, S²-Attn
    auto = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    if kind == "reward":
        kwargs["num_labels"] = 1
    try:
        model = auto.from_pretrained(base or path, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"model.path={model_cfg.path}: cannot load a model from {base or path} "
                        f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    extended = _fit_vocabulary(model, tokenizer)
    if base:
        model = _attach_adapter(model, path, merge=model_cfg.adapter_merge or hw.method not in ("lora", "dora"))
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing)
    if hw.method == "freeze":
        n = hardware.apply_freeze(model, hw)
        log.info("freeze: %d trainable parameters", n)
    lora = hardware.lora_config(hw, settings.lora_target_modules,
                                task_type="SEQ_CLS" if kind == "reward" else "CAUSAL_LM",
                                embedding_modules=_embedding_modules(model) if extended else ())
    if lora is not None:
        configure_lora(lora, base or path)  # a medgpt.modeling.vocab-extended model's new embedding rows must train
    if lora is not None and not _is_peft(model):
        from peft import get_peft_model

        model = get_peft_model(model, lora)
    return model


def trainable_embeddings(path: str) -> Optional[List[str]]:
    """For a model saved by `extend`: the modules LoRA must train fully (modules_to_save), else None."""
    folder = Path(path)
    if EXTENDED_VOCAB not in run_info(folder):
        return None
    tied = json.loads((folder / MODEL_CONFIG).read_text()).get("tie_word_embeddings", False)
    return ["embed_tokens"] if tied else ["embed_tokens", "lm_head"]


def configure_lora(lora, path: str) -> None:
    """LoRA on an extended-vocabulary model trains the embeddings fully (the new rows start as a mean); with tied
    embeddings the output layer follows the trained copy (peft's ensure_weight_tying), so merging keeps them tied."""
    modules = trainable_embeddings(path)
    if modules and not lora.modules_to_save:
        lora.modules_to_save = modules
        lora.ensure_weight_tying = modules == ["embed_tokens"]
        log.info("extended vocabulary: LoRA trains %s fully", ", ".join(modules))


def _fit_vocabulary(model, tokenizer) -> bool:
    """Grow the embeddings when the tokenizer has more tokens than the model has rows (an extended vocabulary).
    Never shrinks: many models pad their embedding matrix beyond the tokenizer's size."""
    if tokenizer is None or len(tokenizer) <= model.get_input_embeddings().weight.shape[0]:
        return False
    log.info("vocabulary extended: %d -> %d embedding rows", model.get_input_embeddings().weight.shape[0],
             len(tokenizer))
    model.resize_token_embeddings(len(tokenizer))
    return True


def _embedding_modules(model) -> list:
    """Leaf names of the input and output embeddings (e.g. embed_tokens, lm_head) for LoRA's modules_to_save."""
    wanted = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    return [name.rsplit(".", 1)[-1] for name, module in model.named_modules() if id(module) in wanted]


def _local_device():
    import os

    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def _attach_adapter(model, adapter_path: str, merge: bool):
    """A previous run's adapter: merged into the base (then trained anew), or kept and trained further."""
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(adapter_path)
    if config.task_type == "CAUSAL_LM" and not hasattr(model, "prepare_inputs_for_generation"):
        # a policy's adapter under a reward model (SFT -> RM): merge it into the shared body, the head starts anew
        config.task_type, merge = None, True
    model = PeftModel.from_pretrained(model, adapter_path, config=config, is_trainable=not merge)
    if merge:
        model = model.merge_and_unload()
    log.info("adapter %s: %s", adapter_path, "merged into its base" if merge else "kept and trained further")
    return model


def set_generation_defaults(model, tokenizer, template: str) -> None:
    """Generation stops on the template's end-of-turn token (and the tokenizer's EOS)."""
    vocab = tokenizer.get_vocab()
    eot_ids = [vocab[token] for token in stop_tokens(template) if token in vocab]
    config = model.generation_config
    stop = eot_ids + [i for i in ([config.eos_token_id] if isinstance(config.eos_token_id, int)
                                  else (config.eos_token_id or [])) if i not in eot_ids]
    config.eos_token_id = stop if len(stop) > 1 else stop[0]
    config.pad_token_id = tokenizer.pad_token_id


def _inference_device_map(device_map, quantization):
    """None on a CPU; the rank's own GPU by default (torchrun: one full copy per rank); 'auto' spreads layers."""
    import torch

    if device_map in (None, "", "none"):
        return {"": _local_device()} if torch.cuda.is_available() or quantization else None
    return device_map


def load_for_inference(path: str, *, device_map=None, dtype=None, quantization: Optional[str] = None,
                       base: Optional[str] = None, template: Optional[str] = None):
    """Load a run folder / final/ / hub id / adapter (on its recorded base, or `base`) for generation.

    Returns (model, tokenizer, info). The tokenizer carries the saved chat template (or `template`); the
    model's generation_config holds final/'s defaults and stops on the template's end-of-turn token.
    device_map: None (CPU, or this rank's GPU) | "auto" (layers across all visible GPUs) | a dict.
    quantization: None | "4bit" | "8bit" (bitsandbytes; also on a CPU).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if quantization not in (None, "4bit", "8bit"):
        raise UserError(f"quantization={quantization}: use 4bit, 8bit or leave it out")
    path = resolve_path(path)
    info = run_info(path)
    base = base or adapter_base(path)
    if base and not adapter_base(path):
        raise UserError(f"a base model ({base}) was given but {path} holds full weights, not a LoRA adapter; "
                        f"drop the base option")
    trust = bool(info.get("trust_remote_code", False))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load a tokenizer ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    template = template or info.get("template")
    if template and (template != info.get("template") or not tokenizer.chat_template):
        tokenizer.chat_template = load_template(template)
    if not tokenizer.chat_template:
        raise UserError(f"{path} has no chat template; pass one with --template "
                        f"(e.g. qwen, llama3, chatml)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = dict(dtype=dtype or (torch.bfloat16 if torch.cuda.is_available() else torch.float32),
                  trust_remote_code=trust)
    device_map = _inference_device_map(device_map, quantization)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization:
        from types import SimpleNamespace

        kwargs["quantization_config"] = quantization_config(SimpleNamespace(quantization=quantization),
                                                            compute_dtype=kwargs["dtype"])
    try:
        model = AutoModelForCausalLM.from_pretrained(base or path, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a model from {base or path} "
                        f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if (Path(path) / GENERATION_CONFIG).exists():  # an adapter's base has its own: final/'s wins
        model.generation_config = GenerationConfig.from_pretrained(path)
    if template:
        set_generation_defaults(model, tokenizer, template)
    elif model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if base:
        model = _adapter_for_inference(model, tokenizer, path, base)
    model.eval()
    return model, tokenizer, info


def _adapter_for_inference(model, tokenizer, adapter_path: str, base: str):
    """The adapter on its base; a base of another shape (wrong family or size) is a clear error."""
    from peft import PeftModel

    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    try:
        return PeftModel.from_pretrained(model, adapter_path)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"the adapter {adapter_path} does not fit the base model {base} "
                        f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}); load it on the base it "
                        f"was trained from ({adapter_base(adapter_path)})") from None
