"""The one way to load a model and tokenizer: hub id, local folder, a run's final/ (full weights or a LoRA
adapter on its base) or the embedded tiny model; chat template installed; LoRA/QLoRA/freeze applied.

One loading policy (`LoadPolicy`) for every loader (train, eval, reward and reference models, chat, serve, demo, rag,
merge, pipeline): a model's own code (`auto_map`) runs only when the user says so on that command
(`model.trust_remote_code=true` / `--trust-remote-code`), never because a folder's medgpt.json says so; weights are
safetensors only unless the user gives `allow_pickle=true` / `--allow-pickle`; an adapter's base model is held to the
same consent. `check_source` refuses a folder before anything from it is imported or unpickled.

    python -c "from medgpt.modeling.load import resolve_path; print(resolve_path('tiny'))"
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass
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


class OptionalKernelNotice(logging.Filter):
    """bitsandbytes warns when it is imported (by transformers, peft or trl, on every run) that the optional
    `kernels` package for its CPU 4-bit matmul is missing; it then uses its own code. Only a quantized model on a
    CPU would use that kernel, so the notice is held back and shown when such a model loads (show_held_notices);
    every other bitsandbytes message passes."""
    MESSAGE = "gemm_4bit_forward from kernels-community"
    held: List[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.MESSAGE in record.getMessage():
            self.held.append(record)
            return False
        return True


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(OptionalKernelNotice())


def show_held_notices() -> None:
    """A quantized model loads: bitsandbytes' notices held back at import now matter."""
    for record in OptionalKernelNotice.held:
        log.warning("bitsandbytes: %s", record.getMessage())
    OptionalKernelNotice.held.clear()


TOKENIZER_CONFIG = "tokenizer_config.json"  # the tokenizer's own file (transformers' name), read for its auto_map


@dataclass(frozen=True)
class LoadPolicy:
    """What the user consented to on this command. `trust_flag` / `pickle_flag`: how that command spells the
    consent (errors name it)."""
    trust_remote_code: bool = False
    allow_pickle: bool = False
    trust_flag: str = "--trust-remote-code"
    pickle_flag: str = "--allow-pickle"

    @classmethod
    def of_run(cls, cfg) -> "LoadPolicy":
        """A training or eval run's policy: model.trust_remote_code (the model config or the command line) and
        allow_pickle."""
        return cls(bool(cfg.model.trust_remote_code), bool(cfg.allow_pickle), "model.trust_remote_code=true",
                   "allow_pickle=true")

    @classmethod
    def of_args(cls, args) -> "LoadPolicy":
        """A command's policy: its --trust-remote-code and --allow-pickle (add_consent_flags)."""
        return cls(bool(args.trust_remote_code), bool(args.allow_pickle))


def add_consent_flags(parser, code_of: str = "the model's") -> None:
    """--trust-remote-code and --allow-pickle, as every command that loads a model spells them; `code_of`: whose code
    the first one runs."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help=f"run {code_of} own code (auto_map) if it needs it; only for sources you trust")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load pickle (.bin) weights; unpickling can run code: only for sources you trust")


def remote_code_request(folder: Path) -> Optional[str]:
    """What in a local model folder would run the folder's own code (an auto_map class that transformers does not
    have), or None. Nothing is imported: the JSON files are read."""
    from transformers import CONFIG_MAPPING

    for name, key in ((MODEL_CONFIG, "model_type"), (TOKENIZER_CONFIG, "tokenizer_class")):
        try:
            config = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = config.get("auto_map") if isinstance(config, dict) else None
        if not auto_map:
            continue
        if name == MODEL_CONFIG and config.get(key) in CONFIG_MAPPING:
            continue  # transformers has the class: trust_remote_code=False loads its own, the folder's never runs
        if name == TOKENIZER_CONFIG and _known_tokenizer(config.get(key)):
            continue
        targets = sorted({str(t) for v in auto_map.values() for t in (v if isinstance(v, list) else [v]) if t})
        return f"{name} maps {', '.join(targets)} to the folder's own code"
    return None


def _known_tokenizer(name) -> bool:
    import transformers

    return isinstance(name, str) and hasattr(transformers, name)


def check_source(path: str, policy: LoadPolicy, what: str = "model.path") -> None:
    """Refuse, before anything is imported or unpickled, a local model or adapter folder (and an adapter's local base)
    that holds pickle weights only or would run its own code, unless the user consented on this command. A hub base
    is checked by transformers itself: medgpt always passes trust_remote_code as the explicit consent."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return
    check_weights(str(folder), policy.allow_pickle, what=what, flag=policy.pickle_flag)
    request = None if policy.trust_remote_code else remote_code_request(folder)
    if request:
        raise UserError(f"{what}={path}: {request}; medgpt runs a model's own code only with {policy.trust_flag} "
                        f"on the command (a folder cannot ask for it). Add it only if you trust the source")
    base = adapter_base(folder)
    if base and Path(base).expanduser().resolve() != folder.resolve():
        check_source(base, policy, what=f"the base_model_name_or_path of {path}")


def load_failure(e: Exception, what: str, source: str, policy: LoadPolicy) -> UserError:
    """A transformers/peft loading error as one line; a refusal of remote code names the consent flag."""
    first = (str(e).strip().splitlines() or [""])[0]
    offline = offline_failure(e, source, what.split("=", 1)[0]) if isinstance(e, OSError) else None
    if offline:
        return offline
    if "custom code" in str(e) or "trust_remote_code" in str(e):
        return UserError(f"{what}: {source} needs its own code to load; medgpt runs it only with "
                         f"{policy.trust_flag} on the command, if you trust the source")
    if "safetensors" in str(e) and not policy.allow_pickle:
        return UserError(f"{what}: {source} has no safetensors weights ({first[:200]}); convert them, or give "
                         f"{policy.pickle_flag} if you trust the source")
    return UserError(f"{what}: cannot load {source} ({type(e).__name__}: {first[:300]})")


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


HUB_PROBE_TIMEOUT = float(os.environ.get("MEDGPT_HUB_PROBE_TIMEOUT", "3"))  # seconds: one probe per process


def is_hub_id(path: str) -> bool:
    """A hub repository id (org/name or name) rather than a local folder."""
    return not Path(path).expanduser().exists() and bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path))


@functools.lru_cache(maxsize=None)
def hub_unreachable(endpoint: str) -> Optional[str]:
    """Why the hub cannot be reached (one request, HUB_PROBE_TIMEOUT seconds), or None when it answers (any HTTP
    status counts as an answer). transformers' own retries take about a minute to give up on a dead network."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(endpoint.rstrip("/") + "/api/models", method="HEAD"),
                               timeout=HUB_PROBE_TIMEOUT).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", e)) or type(e).__name__
    return None


def hub_source(path: str, what: str = "model.path") -> str:
    """A hub id as transformers should load it, decided in seconds: as given when the hub answers (or offline mode
    is on); its cached snapshot folder when the hub cannot be reached; else a UserError naming the ways forward."""
    from huggingface_hub import constants

    if not is_hub_id(path) or constants.HF_HUB_OFFLINE:
        return path
    reason = hub_unreachable(constants.ENDPOINT)
    if reason is None:
        return path
    from huggingface_hub import snapshot_download

    try:
        cached = snapshot_download(path, local_files_only=True)
    except Exception:  # not in the cache (huggingface_hub raises one of several errors)
        cached = None
    if cached:
        log.warning("%s=%s: the hub (%s) cannot be reached (%s); using the cached copy %s", what, path,
                    constants.ENDPOINT, reason, cached)
        return cached
    raise UserError(f"{what}={path}: the Hugging Face hub ({constants.ENDPOINT}) cannot be reached ({reason}) and "
                    f"{path} is not in the local cache. Either download it where the hub is reachable "
                    f"(huggingface-cli download {path}) and run with HF_HUB_OFFLINE=1, or give {what}=<local folder>")


def offline_failure(e: Exception, path: str, what: str) -> Optional[UserError]:
    """HF_HUB_OFFLINE=1 and the model is not cached: the same ways forward."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE and is_hub_id(path):
        return UserError(f"{what}={path}: not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it. Either "
                         f"download it where the hub is reachable (huggingface-cli download {path}), or give "
                         f"{what}=<local folder>")
    return None


def load_tokenizer(model_cfg, path: Optional[str] = None):
    """Tokenizer with the model config's chat template installed (so every saved final/ carries it)."""
    from transformers import AutoTokenizer

    path = hub_source(path or resolve_path(model_cfg.path, model_cfg.tiny))
    policy = LoadPolicy(bool(model_cfg.trust_remote_code), True, trust_flag="model.trust_remote_code=true")
    check_source(path, policy)  # remote code only: a tokenizer unpickles nothing
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=policy.trust_remote_code)
    except OSError as e:
        raise offline_failure(e, path, "model.path") or UserError(
            f"model.path={model_cfg.path}: cannot load a tokenizer from {path} ({e})") from None
    except ValueError as e:
        raise load_failure(e, f"model.path={model_cfg.path}", path, policy) from None
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
    settings (medgpt.config.resolve): precision, LoRA targets, gradient checkpointing, max_length (RoPE auto).
    Consent (LoadPolicy): model_cfg.trust_remote_code and allow_pickle, from this run's config only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    _check_cuda_features(model_cfg, hw)
    policy = LoadPolicy(bool(model_cfg.trust_remote_code), allow_pickle, "model.trust_remote_code=true",
                        "allow_pickle=true")
    path = hub_source(resolve_path(model_cfg.path, model_cfg.tiny))
    base = adapter_base(path)
    base = base and hub_source(base, "the adapter's base_model_name_or_path")
    check_source(path, policy)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[settings.precision]
    if model_cfg.dtype != "auto":
        dtype = getattr(torch, model_cfg.dtype)
    kwargs = dict(dtype=dtype, trust_remote_code=policy.trust_remote_code,
                  use_safetensors=None if allow_pickle else True)  # pickle weights only with allow_pickle=true
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    quant = hardware.quantization_config(hw, compute_dtype=dtype)
    if quant is not None:
        show_held_notices()
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": _local_device()}
    kwargs.update(longcontext.load_kwargs(model_cfg, base or path, settings.max_length))  # rope scaling, S²-Attn
    auto = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    if kind == "reward":
        kwargs["num_labels"] = 1
    try:
        model = auto.from_pretrained(base or path, **kwargs)
    except (OSError, ValueError) as e:
        raise load_failure(e, f"model.path={model_cfg.path}", base or path, policy) from None
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
                       base: Optional[str] = None, template: Optional[str] = None,
                       policy: LoadPolicy = LoadPolicy()):
    """Load a run folder / final/ / hub id / adapter (on its recorded base, or `base`) for generation.

    Returns (model, tokenizer, info). The tokenizer carries the saved chat template (or `template`); the
    model's generation_config holds final/'s defaults and stops on the template's end-of-turn token.
    device_map: None (CPU, or this rank's GPU) | "auto" (layers across all visible GPUs) | a dict.
    quantization: None | "4bit" | "8bit" (bitsandbytes; also on a CPU).
    policy: the command's consent (--trust-remote-code, --allow-pickle); what the folder's medgpt.json says is
    never consent.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if quantization not in (None, "4bit", "8bit"):
        raise UserError(f"quantization={quantization}: use 4bit, 8bit or leave it out")
    path = hub_source(resolve_path(path), "model")
    info = run_info(path)
    base = base or adapter_base(path)
    base = base and hub_source(base, "base")
    if base and not adapter_base(path):
        raise UserError(f"a base model ({base}) was given but {path} holds full weights, not a LoRA adapter; "
                        f"drop the base option")
    check_source(path, policy, what="model")
    if base:
        check_source(base, policy, what="base")
    trust = policy.trust_remote_code
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        raise load_failure(e, "tokenizer", path, policy) from None
    template = template or info.get("template")
    if template and (template != info.get("template") or not tokenizer.chat_template):
        tokenizer.chat_template = load_template(template)
    if not tokenizer.chat_template:
        raise UserError(f"{path} has no chat template; pass one with --template "
                        f"(e.g. qwen, llama3, chatml)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = dict(dtype=dtype or (torch.bfloat16 if torch.cuda.is_available() else torch.float32),
                  trust_remote_code=trust, use_safetensors=None if policy.allow_pickle else True)
    device_map = _inference_device_map(device_map, quantization)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization:
        from types import SimpleNamespace

        show_held_notices()
        kwargs["quantization_config"] = quantization_config(SimpleNamespace(quantization=quantization),
                                                            compute_dtype=kwargs["dtype"])
    try:
        model = AutoModelForCausalLM.from_pretrained(base or path, **kwargs)
    except (OSError, ValueError) as e:
        raise load_failure(e, "model", base or path, policy) from None
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
