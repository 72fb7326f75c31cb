"""GPU memory estimate for a composed model x hardware, from the model's config only (no weights are loaded):
weights, gradients, optimizer states, activations (with/without gradient checkpointing), logits, with ZeRO or FSDP2
sharding over N GPUs. Each term is printed. hardware=auto: `plan` picks the setting that fits a machine.

    medgpt estimate model=qwen2.5-7b hardware=qlora4
    medgpt estimate model=llama-65b hardware=full hardware/deepspeed=zero3 --gpus 8 --seq 2048
    medgpt estimate --table        # MedicalGPT's VRAM table next to our estimates
    medgpt estimate model=llama-7b hardware=auto hardware.auto.gpus=8 hardware.auto.memory_gb=80   # the plan

Shapes: a local model folder's config.json (model.path or a run's final/), else SHAPES below by model.name, else
the Hugging Face cache (AutoConfig, offline). Parameter counts come from the transformers model class built on
the meta device, so they are exact for the architecture.
"""
from __future__ import annotations

import argparse
import functools
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from medgpt.config import CONF_DIR, GPU_DEVICE, HardwareConfig, RunSettings, compose as compose_run, resolve
from medgpt.errors import UserError, command
from medgpt.modeling.hardware import check_deepspeed, check_fsdp, check_method, device_info, zero_stage
from medgpt.modeling.load import resolve_path
from medgpt.runs import adapter_base, world_size

log = logging.getLogger(__name__)
GB = 1e9

# Reference shapes (from the models' published config.json files) for models whose config cannot be read offline.
_LLAMA = dict(model_type="llama", vocab_size=32000, tie_word_embeddings=False)
SHAPES: Dict[str, dict] = {
    "llama-7b": dict(_LLAMA, hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, num_attention_heads=32),
    "llama-13b": dict(_LLAMA, hidden_size=5120, num_hidden_layers=40, intermediate_size=13824,
                      num_attention_heads=40),
    "llama-30b": dict(_LLAMA, hidden_size=6656, num_hidden_layers=60, intermediate_size=17920,
                      num_attention_heads=52),
    "llama-65b": dict(_LLAMA, hidden_size=8192, num_hidden_layers=80, intermediate_size=22016,
                      num_attention_heads=64),
    "mixtral-8x7b": dict(model_type="mixtral", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                         intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                         num_local_experts=8, num_experts_per_tok=2, tie_word_embeddings=False),
    "llama3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32,
                      intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      tie_word_embeddings=False),
    "qwen1.5-7b": dict(model_type="qwen2", vocab_size=151936, hidden_size=4096, num_hidden_layers=32,
                       intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                       tie_word_embeddings=False),
    "qwen2.5-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, num_hidden_layers=28,
                       intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                       tie_word_embeddings=False),
    # Each entry below: the published config.json named in the model's conf/model/<name>.yaml comment.
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, num_hidden_layers=28,
                       intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       tie_word_embeddings=True),
    "qwen3-8b": dict(model_type="qwen3", vocab_size=151936, hidden_size=4096, num_hidden_layers=36,
                     intermediate_size=12288, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     tie_word_embeddings=False),
    "qwen3.5-9b": dict(model_type="qwen3_5_text", vocab_size=248320, hidden_size=4096, num_hidden_layers=32,
                       intermediate_size=12288, num_attention_heads=16, num_key_value_heads=4, head_dim=256,
                       linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
                       linear_value_head_dim=128, tie_word_embeddings=False),
    "llama3.1-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32,
                        intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                        tie_word_embeddings=False),
    "llama3.1-70b": dict(model_type="llama", vocab_size=128256, hidden_size=8192, num_hidden_layers=80,
                         intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
                         tie_word_embeddings=False),
    "llama3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, num_hidden_layers=16,
                        intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                        tie_word_embeddings=True),
    "llama3.2-3b": dict(model_type="llama", vocab_size=128256, hidden_size=3072, num_hidden_layers=28,
                        intermediate_size=8192, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                        tie_word_embeddings=True),
    "gemma3-1b": dict(model_type="gemma3_text", vocab_size=262144, hidden_size=1152, num_hidden_layers=26,
                      intermediate_size=6912, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                      tie_word_embeddings=True),
    # Gemma 3 4B / 12B / 27B: the text_config of the published config.json (the ~0.4B SigLIP vision tower of the
    # multimodal checkpoints is not counted)
    "gemma3-4b": dict(model_type="gemma3_text", vocab_size=262208, hidden_size=2560, num_hidden_layers=34,
                      intermediate_size=10240, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                      tie_word_embeddings=True),
    "gemma3-12b": dict(model_type="gemma3_text", vocab_size=262208, hidden_size=3840, num_hidden_layers=48,
                       intermediate_size=15360, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                       tie_word_embeddings=True),
    "gemma3-27b": dict(model_type="gemma3_text", vocab_size=262208, hidden_size=5376, num_hidden_layers=62,
                       intermediate_size=21504, num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                       tie_word_embeddings=True),
    "deepseek-v3": dict(model_type="deepseek_v3", vocab_size=129280, hidden_size=7168, num_hidden_layers=61,
                        intermediate_size=18432, moe_intermediate_size=2048, num_attention_heads=128,
                        num_key_value_heads=128, n_shared_experts=1, n_routed_experts=256, num_experts_per_tok=8,
                        first_k_dense_replace=3, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                        qk_rope_head_dim=64, v_head_dim=128, n_group=8, topk_group=4, tie_word_embeddings=False),
    "deepseek-r1-distill-qwen-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536,
                                          num_hidden_layers=28, intermediate_size=8960, num_attention_heads=12,
                                          num_key_value_heads=2, tie_word_embeddings=False),
    "deepseek-r1-distill-qwen-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, num_hidden_layers=28,
                                        intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                                        tie_word_embeddings=False),
    "deepseek-r1-distill-qwen-14b": dict(model_type="qwen2", vocab_size=152064, hidden_size=5120,
                                         num_hidden_layers=48, intermediate_size=13824, num_attention_heads=40,
                                         num_key_value_heads=8, tie_word_embeddings=False),
    "deepseek-r1-distill-qwen-32b": dict(model_type="qwen2", vocab_size=152064, hidden_size=5120,
                                         num_hidden_layers=64, intermediate_size=27648, num_attention_heads=40,
                                         num_key_value_heads=8, tie_word_embeddings=False),
    "qwen2.5-72b": dict(model_type="qwen2", vocab_size=152064, hidden_size=8192, num_hidden_layers=80,
                        intermediate_size=29568, num_attention_heads=64, num_key_value_heads=8,
                        tie_word_embeddings=False),
    "mistral-nemo-12b": dict(model_type="mistral", vocab_size=131072, hidden_size=5120, num_hidden_layers=40,
                             intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                             tie_word_embeddings=False),
    "mistral-small-24b": dict(model_type="mistral", vocab_size=131072, hidden_size=5120, num_hidden_layers=40,
                              intermediate_size=32768, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                              tie_word_embeddings=False),
    "phi4-14b": dict(model_type="phi3", vocab_size=100352, hidden_size=5120, num_hidden_layers=40,
                     intermediate_size=17920, num_attention_heads=40, num_key_value_heads=10,
                     tie_word_embeddings=False),
    "glm4-9b": dict(model_type="glm4", vocab_size=151552, hidden_size=4096, num_hidden_layers=40,
                    intermediate_size=13696, num_attention_heads=32, num_key_value_heads=2, head_dim=128,
                    attention_bias=True, partial_rotary_factor=0.5, tie_word_embeddings=False),
    "internlm3-8b": dict(model_type="llama", vocab_size=128512, hidden_size=4096, num_hidden_layers=48,
                         intermediate_size=10240, num_attention_heads=32, num_key_value_heads=2, head_dim=128,
                         tie_word_embeddings=False),
    "llama2-70b": dict(model_type="llama", vocab_size=32000, hidden_size=8192, num_hidden_layers=80,
                       intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
                       tie_word_embeddings=False),
    "mistral-7b": dict(model_type="mistral", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                       intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                       tie_word_embeddings=False),
}
# Fine-tunes with their base model's shape (the base named in each model's conf/model/<name>.yaml comment).
SHAPES.update({
    "llama3.3-70b": SHAPES["llama3.1-70b"], "deepseek-r1": SHAPES["deepseek-v3"],
    "deepseek-r1-distill-llama-8b": SHAPES["llama3.1-8b"], "deepseek-r1-distill-llama-70b": SHAPES["llama3.1-70b"],
    "qwen3.5-9b-nothink": SHAPES["qwen3.5-9b"], "medgemma-4b": SHAPES["gemma3-4b"],
    "medgemma-27b": SHAPES["gemma3-27b"], "huatuogpt-o1-8b": SHAPES["llama3.1-8b"],
    "huatuogpt-o1-70b": SHAPES["llama3.1-70b"], "huatuogpt-o1-7b": SHAPES["qwen2.5-7b"],
    "huatuogpt-o1-72b": SHAPES["qwen2.5-72b"], "baichuan-m2-32b": SHAPES["deepseek-r1-distill-qwen-32b"],
    "meditron-7b": SHAPES["llama-7b"], "meditron-70b": SHAPES["llama2-70b"], "biomistral-7b": SHAPES["mistral-7b"],
})

# MedicalGPT's README table (GB), method -> sizes, as printed there.
MEDICALGPT_TABLE = {
    "full16": {"llama-7b": 160, "llama-13b": 320, "llama-30b": 600, "llama-65b": 1200, "mixtral-8x7b": 900},
    "lora16": {"llama-7b": 16, "llama-13b": 32, "llama-30b": 80, "llama-65b": 160, "mixtral-8x7b": 120},
    "qlora8": {"llama-7b": 10, "llama-13b": 16, "llama-30b": 40, "llama-65b": 80, "mixtral-8x7b": 80},
    "qlora4": {"llama-7b": 6, "llama-13b": 12, "llama-30b": 24, "llama-65b": 48, "mixtral-8x7b": 32},
}
# The hardware overrides each table row means. The table assumes no gradient checkpointing for full
# fine-tuning (mixed precision, i.e. DeepSpeed's fp32 master weights) and checkpointing for the adapter rows.
TABLE_HARDWARE = {
    "full16": ["hardware=full", "hardware/deepspeed=zero0", "hardware.gradient_checkpointing=false"],
    "lora16": ["hardware=lora", "hardware.gradient_checkpointing=true"],
    "qlora8": ["hardware=qlora8"],
    "qlora4": ["hardware=qlora4"],
}
TABLE_SEQ, TABLE_BATCH = 1024, 1  # sequence length and micro batch the table is compared at
CUDA_CONTEXT_BYTES = 1.0 * GB  # CUDA context + cuBLAS workspace, per GPU
# PyTorch's caching allocator reserves more than the live tensors (fragmentation, rounding to blocks); reserved
# memory commonly runs 10-30% above allocated in training. Fitted once against the table (see docs/hardware.md).
ALLOCATOR_OVERHEAD = 0.20


@dataclass
class Shape:
    """Parameter counts of one architecture, split the way memory needs them."""
    total: int
    layer_matrices: int  # >=2-D weights inside the decoder layers: what bitsandbytes quantizes
    embeddings: int  # input embeddings + untied output head
    linear_targets: Dict[str, List[tuple]]  # leaf name -> [(in, out)] of each nn.Linear in one decoder layer
    layers: int
    hidden: int
    kv_dim: int
    intermediate: int
    heads: int
    vocab: int
    experts_per_token: int = 1
    layer_params: int = 0  # parameters of one decoder layer


@dataclass
class Estimate:
    terms: Dict[str, float] = field(default_factory=dict)  # name -> bytes per GPU
    notes: List[str] = field(default_factory=list)
    cpu_bytes: float = 0.0  # offloaded to CPU RAM (ZeRO offload)

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    def report(self, title: str) -> str:
        lines = [title] + [f"  {name:<28}{value / GB:10.2f} GB" for name, value in self.terms.items()]
        lines.append(f"  {'total per GPU':<28}{self.total / GB:10.2f} GB")
        if self.cpu_bytes:
            lines.append(f"  {'offloaded to CPU RAM':<28}{self.cpu_bytes / GB:10.2f} GB")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def config_from_shape(shape: dict):
    from transformers import AutoConfig

    shape = dict(shape)
    return AutoConfig.for_model(shape.pop("model_type"), **shape)


def model_config(model_cfg):
    """The transformers config of model_cfg without loading weights: local folder, SHAPES, or the HF cache."""
    from transformers import AutoConfig

    if model_cfg.name in SHAPES:
        return config_from_shape(SHAPES[model_cfg.name])
    path = resolve_path(model_cfg.path, model_cfg.get("tiny"))
    path = adapter_base(path) or path
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"no config for model {model_cfg.name} ({path}) offline: {str(e).splitlines()[0]}. Add its "
                        f"shape to medgpt.modeling.estimate.SHAPES or point model.path at a folder with config.json") from None


def count_shape(config) -> Shape:
    """Exact parameter counts: the transformers model class built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    embedding_ids = {id(model.get_input_embeddings().weight)}
    if model.get_output_embeddings() is not None:
        embedding_ids.add(id(model.get_output_embeddings().weight))
    total = layer_matrices = embeddings = layer0 = 0
    seen = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = param.numel()
        total += n
        if id(param) in embedding_ids:
            embeddings += n
        elif re.search(r"\.layers\.\d+\.", name) and param.dim() >= 2:
            layer_matrices += n
        if re.search(r"\.layers\.0\.", name):
            layer0 += n
    targets: Dict[str, List[tuple]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and re.search(r"\.layers\.0\.", name):
            targets.setdefault(name.rsplit(".", 1)[-1], []).append((module.in_features, module.out_features))
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return Shape(total=total, layer_matrices=layer_matrices, embeddings=embeddings, linear_targets=targets,
                 layers=text.num_hidden_layers, hidden=text.hidden_size, kv_dim=kv_heads * head_dim,
                 intermediate=getattr(text, "moe_intermediate_size", None) or text.intermediate_size, heads=heads,
                 vocab=text.vocab_size, experts_per_token=getattr(text, "num_experts_per_tok", None) or 1,
                 layer_params=layer0)


@functools.lru_cache(maxsize=None)
def reference_shape(name: str) -> Shape:
    return count_shape(config_from_shape(SHAPES[name]))


def lora_parameters(shape: Shape, targets, r: int) -> tuple:
    """(parameter count, summed input features per layer) of LoRA adapters on the targeted nn.Linear layers."""
    chosen = [(name, dims) for name, dims in shape.linear_targets.items()
              if targets == "all-linear" or name in set(targets or [])]
    if targets != "all-linear" and not chosen:
        raise UserError(f"LoRA target modules {list(targets)} match no linear layer of this model; its layers have "
                        f"{sorted(shape.linear_targets)}")
    per_layer = sum(r * (i + o) for _, dims in chosen for i, o in dims)
    inputs = sum(i for _, dims in chosen for i, _ in dims)
    return per_layer * shape.layers, inputs


def estimate(shape: Shape, hw, *, seq: int, batch: int, gpus: int = 1, attn: Optional[str] = None,
             lora_targets="all-linear", precision: str = "bf16", gradient_checkpointing: bool = False,
             cuda: bool = True) -> Estimate:
    """Bytes per GPU (per process on a CPU: cuda=False, no CUDA context), term by term. hw: the composed hardware
    node (method, quantization, lora_r, lora_dropout, freeze_trainable_layers, deepspeed, fsdp); the rest as the
    run's settings resolved them (medgpt.config.resolve)."""

    est = Estimate()
    act = 4 if precision == "fp32" else 2  # bytes of a weight / activation element
    stage = zero_stage(hw.deepspeed)
    zero = hw.deepspeed.get("zero_optimization", {}) if stage is not None else {}
    fsdp = hw.get("fsdp") if stage is None else None
    rest = shape.total - shape.layer_matrices

    # weights
    if hw.quantization == "4bit":  # nf4: 0.5 B + double-quantised absmax (8 bit per 64 + fp32 per 256 blocks)
        weights = shape.layer_matrices * (0.5 + 1 / 64 + 4 / (64 * 256)) + rest * act
    elif hw.quantization == "8bit":  # int8 + one fp32 scale per output row (negligible)
        weights = shape.layer_matrices * 1.0 + rest * act
    else:
        weights = shape.total * act

    # trainable parameters
    lora_inputs = 0
    if hw.method in ("lora", "dora"):
        trainable, lora_inputs = lora_parameters(shape, lora_targets, hw.lora_r)
        if hw.method == "dora":  # one magnitude per output feature of each target
            trainable += sum(o for dims in shape.linear_targets.values() for _, o in dims) * shape.layers
    elif hw.method == "freeze":
        trainable = shape.layer_params * min(hw.freeze_trainable_layers, shape.layers)
    else:
        trainable = shape.total

    # gradients and optimizer (AdamW: two moments). DeepSpeed with 16-bit keeps fp32 master weights + fp32 moments;
    # the plain Trainer keeps the moments in the weights' dtype. Adapters are always trained in fp32 by peft.
    adapter = hw.method in ("lora", "dora")
    grad_bytes = 4 if adapter else act
    if adapter:
        optimizer_bytes = 8
    elif stage is not None and act == 2:
        optimizer_bytes = 12
        est.notes.append("DeepSpeed mixed precision: fp32 master weights + fp32 Adam moments (12 B/param)")
    elif fsdp and act == 2:  # accelerate upcasts trainable 16-bit parameters to fp32 for FSDP2's mixed precision
        optimizer_bytes, grad_bytes = 8, 4
        weights += trainable * (4 - act)
        est.notes.append("FSDP2 mixed precision: trainable weights, gradients and Adam moments in fp32 (16 B/param)")
    else:
        optimizer_bytes = 2 * act
    if adapter:
        weights += trainable * 4
    gradients = trainable * grad_bytes
    optimizer = trainable * optimizer_bytes

    # ZeRO partitioning over the GPUs and offload
    if stage is not None and gpus > 1:
        if stage >= 1:
            optimizer /= gpus
        if stage >= 2:
            gradients /= gpus
        if stage >= 3:
            weights /= gpus
        est.notes.append(f"ZeRO-{stage} over {gpus} GPUs")
    if zero.get("offload_optimizer", {}).get("device") == "cpu":
        est.cpu_bytes += optimizer
        optimizer = 0
    if zero.get("offload_param", {}).get("device") == "cpu":
        est.cpu_bytes += weights
        weights = shape.layer_params * act  # one layer gathered at a time
    if fsdp:  # FSDP2: every sharded term over the processes, plus the weights gathered for compute
        if gpus > 1:
            weights, gradients, optimizer = weights / gpus, gradients / gpus, optimizer / gpus
            est.notes.append(f"FSDP2 over {gpus} processes")
        if fsdp.get("cpu_offload"):
            est.cpu_bytes += weights + gradients + optimizer
            weights = gradients = optimizer = 0
    est.terms["weights"] = weights
    est.terms["gradients"] = gradients
    est.terms["optimizer states"] = optimizer
    if fsdp:  # this layer and the prefetched next one; without resharding every layer stays gathered until backward
        reshard = fsdp.get("reshard_after_forward", True)
        est.terms["gathered weights (FSDP)"] = (2 * shape.layer_params if reshard else shape.total) * act

    # activations per token per layer: residual + norm outputs, q/k/v, attention output, MLP (top-k experts)
    per_token_layer = act * (5 * shape.hidden + 2 * shape.kv_dim + 4 * shape.intermediate * shape.experts_per_token)
    if adapter and hw.lora_dropout:
        per_token_layer += act * lora_inputs  # dropout(x) kept for each adapter's input
    if attn == "eager":
        per_token_layer += act * 2 * shape.heads * seq  # attention scores + probabilities
    tokens = seq * batch
    if gradient_checkpointing:
        activations = tokens * (act * shape.hidden * shape.layers + per_token_layer)
        est.notes.append("gradient checkpointing: layer inputs kept, one layer recomputed at a time")
    else:
        activations = tokens * per_token_layer * shape.layers
    est.terms["activations"] = activations
    est.terms["logits + loss"] = tokens * shape.vocab * (act + 4 + 4)  # logits, fp32 upcast, its gradient
    est.terms["allocator overhead"] = ALLOCATOR_OVERHEAD * sum(est.terms.values())
    if cuda:
        est.terms["CUDA context"] = CUDA_CONTEXT_BYTES
    return est


def estimate_run(cfg, settings: Optional[RunSettings] = None, *, gpus: Optional[int] = None, seq: Optional[int] = None,
                 batch: Optional[int] = None, precision: Optional[str] = None, cuda: bool = True) -> Estimate:
    """Estimate for a composed run config (model x hardware x stage args). settings: the run's (medgpt.config.resolve;
    by default as a bf16 GPU would train it): sequence = its max_length, micro batch, precision, LoRA targets and
    gradient checkpointing. seq / batch / precision override them (the --seq / --batch options, the table)."""
    settings = settings or resolve(cfg, GPU_DEVICE)
    shape = reference_shape(cfg.model.name) if cfg.model.name in SHAPES else count_shape(model_config(cfg.model))
    seq = seq or settings.max_length
    batch = batch or settings.per_device_train_batch_size or 1
    gpus = gpus or world_size()
    precision = precision or settings.precision
    est = estimate(shape, cfg.hardware, seq=seq, batch=batch, gpus=gpus, attn=cfg.model.attn_implementation,
                   lora_targets=settings.lora_target_modules, precision=precision,
                   gradient_checkpointing=settings.gradient_checkpointing, cuda=cuda)
    est.notes.insert(0, f"{shape.total / 1e6:,.1f}M parameters, sequence {seq}, micro batch {batch}, {gpus} GPU(s), "
                        f"{precision}")
    return est


def warn_if_too_large(cfg, settings: RunSettings) -> Optional[Estimate]:
    """Before training on a GPU: warn when the estimate of the run (its settings) exceeds the visible GPU memory."""
    if not settings.cuda:
        return None
    import torch

    try:
        est = estimate_run(cfg, settings)
    except Exception as e:  # the estimate is advice; never block training on it
        log.info("memory estimate unavailable: %s", e)
        return None
    visible = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    if est.total > visible:
        log.warning("estimated GPU memory %.1f GB exceeds the visible %.1f GB: expect an out-of-memory error. "
                    "Try hardware=qlora4, hardware.gradient_checkpointing=true, a smaller "
                    "stage.args.per_device_train_batch_size, or hardware/deepspeed=zero3 over more GPUs.\n%s",
                    est.total / GB, visible / GB, est.report("estimate"))
    return est


# ---- hardware=auto: the fastest setting that fits (medgpt.config.resolve calls plan) ---------------------------
# Relative step time of each way to spread a run (1 = plain data parallel on GPUs that hold everything), a rough
# model: ZeRO-1/2 and FSDP's shard_grad_op add a reduce-scatter, full sharding re-gathers every layer twice per step,
# offload moves the optimizer step to the CPU. Gradient checkpointing recomputes the forward (+1/3); micro batches
# below 4 leave a GPU partly idle.
SHARDING_COST = {"none": 1.0, "zero1": 1.02, "zero2": 1.05, "fsdp_shard_grad_op": 1.05, "fsdp_full_shard": 1.15,
                 "zero3": 1.2, "fsdp_full_shard_offload": 2.5, "zero3_offload": 3.0}
CHECKPOINTING_COST = 4 / 3
OFFLOAD = ("fsdp_full_shard_offload", "zero3_offload")
AUTO_KNOBS = ("precision", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "modules_to_save",
              "freeze_trainable_layers", "freeze_trainable_modules", "args")


def batch_cost(batch: int) -> float:
    return 1.0 + 0.25 / batch


def candidate_node(auto_hw, method: str, sharding: str):
    """The hardware node hardware=<method> hardware/<deepspeed|fsdp>=<sharding> composes to, with the auto node's
    knobs (LoRA rank, freeze layers, precision, args)."""
    from omegaconf import OmegaConf

    node = OmegaConf.merge(OmegaConf.structured(HardwareConfig), _conf_node(f"hardware/{method}.yaml"))
    for key in AUTO_KNOBS:
        if auto_hw.get(key) is not None:
            node[key] = auto_hw[key]
    if sharding.startswith("zero"):
        node.deepspeed = _conf_node(f"hardware/deepspeed/{sharding}.yaml")
    elif sharding.startswith("fsdp_"):
        node.fsdp = _conf_node(f"hardware/fsdp/{sharding[len('fsdp_'):]}.yaml")
    node.auto = None
    return node


def _conf_node(relative: str):
    from omegaconf import OmegaConf

    path = CONF_DIR / relative
    if not path.is_file():
        raise UserError(f"hardware.auto names {relative.rsplit('/', 1)[-1][:-5]}, which has no {path}")
    return OmegaConf.load(path)


def _refusal(node, gpus: int) -> Optional[str]:
    """Why this combination cannot run (the checks training applies; DeepSpeed must be installed), else None."""
    import importlib.util

    if node.deepspeed and importlib.util.find_spec("deepspeed") is None:
        return "DeepSpeed is not installed: refused"
    try:
        check_method(node)
        check_deepspeed(node)
        check_fsdp(node, launched=True, cuda=gpus > 0)
    except UserError as e:
        return str(e).split(":")[0] + ": refused"
    return None


def plan(cfg, settings: RunSettings, machine: Dict[str, Any], global_batch: int,
         checkpointing: Optional[bool] = None) -> Dict[str, Any]:
    """hardware=auto: every candidate (method x ZeRO/FSDP x gradient checkpointing x micro batch) estimated for the
    machine. The first method of hardware.auto.methods that has a fitting setting is chosen (they are in order of
    preference: the most trained parameters first), and among its fitting settings the fastest by the cost model
    above; per-device batch x accumulation x GPUs = the configured global batch. checkpointing: fixed by
    stage.args.gradient_checkpointing, else both are tried. Returns the record written to the run folder."""
    auto = cfg.hardware.auto
    gpus, cuda = machine["gpus"], machine["gpus"] > 0
    usable = machine["memory_gb"] * (1 - float(auto.margin))
    ram = float(machine.get("ram_gb") or 0)  # for offloaded states
    world = max(gpus, 1)
    per_gpu = global_batch // world
    batches = [b for b in range(min(per_gpu, int(auto.max_micro_batch)), 0, -1) if per_gpu % b == 0]
    precision = "bf16" if cuda else "fp32"
    shape = reference_shape(cfg.model.name) if cfg.model.name in SHAPES else count_shape(model_config(cfg.model))
    shardings = [s for s in auto.sharding if s in SHARDING_COST and (
        s == "none" if not cuda else s == "none" or gpus > 1 or s in OFFLOAD)]
    unknown = [s for s in auto.sharding if s not in SHARDING_COST]
    if unknown:
        raise UserError(f"hardware.auto.sharding: unknown {', '.join(unknown)}; use {', '.join(SHARDING_COST)}")
    rows: List[Dict[str, Any]] = []
    chosen = None
    for method in auto.methods:
        for sharding in shardings:
            node = candidate_node(cfg.hardware, method, sharding)
            refused = _refusal(node, gpus)
            for ckpt in ([checkpointing] if checkpointing is not None else [False, True]):
                row = {"method": method, "sharding": sharding, "gradient_checkpointing": ckpt,
                       "per_device_train_batch_size": None, "gradient_accumulation_steps": None,
                       "memory_gb": None, "cpu_offload_gb": 0.0, "cost": None, "verdict": refused}
                rows.append(row)
                if refused:
                    continue
                for b in batches:  # largest fitting micro batch first
                    est = estimate(shape, node, seq=settings.max_length, batch=b, gpus=world,
                                   attn=cfg.model.attn_implementation, lora_targets=settings.lora_target_modules,
                                   precision=precision, gradient_checkpointing=ckpt, cuda=cuda)
                    row.update(memory_gb=round(est.total / GB, 2), cpu_offload_gb=round(est.cpu_bytes / GB, 2))
                    if est.cpu_bytes / GB > ram:
                        row["verdict"] = f"offload needs {est.cpu_bytes / GB:.1f} GB of CPU RAM > {ram:.1f} GB"
                        break
                    if est.total / GB <= usable:
                        row.update(per_device_train_batch_size=b, gradient_accumulation_steps=per_gpu // b,
                                   cost=round(SHARDING_COST[sharding] * (CHECKPOINTING_COST if ckpt else 1.0)
                                              * batch_cost(b), 3))
                        break
                else:
                    row["verdict"] = f"too large: {row['memory_gb']:.1f} GB at micro batch 1 > {usable:.1f} GB"
                if row["cost"] is None and row["verdict"] is None:
                    row["verdict"] = "does not fit"
        fitting = [r for r in rows if r["method"] == method and r["cost"] is not None]
        if fitting:
            chosen = min(fitting, key=lambda r: r["cost"])  # the first of equal cost: the earlier sharding
            break
    if chosen is None:
        smallest = min((r for r in rows if r["memory_gb"] is not None), key=lambda r: r["memory_gb"], default=None)
        need = f"; the smallest candidate ({label(smallest)}) needs {smallest['memory_gb']:.1f} GB" if smallest else ""
        raise UserError(f"hardware=auto: no candidate fits {gpus or 'the CPU'} x {machine['memory_gb']:.0f} GB "
                        f"(usable {usable:.1f} GB after the {auto.margin:.0%} margin){need}. Plan for more GPUs "
                        f"(hardware.auto.gpus), shorten max_length, add qlora4 to hardware.auto.methods or "
                        f"zero3_offload to hardware.auto.sharding")
    for row in rows:
        if row is chosen:
            row["verdict"] = "chosen"
        elif row["verdict"] is None:
            same = row["method"] == chosen["method"]
            row["verdict"] = (f"fits, slower (cost {row['cost']} > {chosen['cost']})" if same
                              else f"fits, but {chosen['method']} comes later in hardware.auto.methods")
    methods = list(auto.methods)
    why = (f"{chosen['method']} is the first of hardware.auto.methods {methods} with a setting that fits "
           f"{usable:.1f} GB per {'GPU' if cuda else 'CPU'} ({machine['memory_gb']:.1f} GB less the {auto.margin:.0%} "
           f"margin); among those, {label(chosen)} is the fastest (relative step time {chosen['cost']})")
    node = candidate_node(cfg.hardware, chosen["method"], chosen["sharding"])
    node.gradient_checkpointing = bool(chosen["gradient_checkpointing"])
    node.name = f"auto-{chosen['method']}"
    from omegaconf import OmegaConf

    return {"machine": {**machine, "usable_gb": round(usable, 2), "precision": precision},
            "model": cfg.model.name, "parameters": shape.total, "max_length": settings.max_length,
            "global_batch_size": global_batch, "chosen": dict(chosen, label=label(chosen)), "why": why,
            "candidates": rows, "hardware": OmegaConf.to_container(node, resolve=True)}


def label(row: Optional[Dict[str, Any]]) -> str:
    if row is None:
        return "-"
    parts = [row["method"]] + ([row["sharding"]] if row["sharding"] != "none" else [])
    parts.append("checkpointing" if row["gradient_checkpointing"] else "no checkpointing")
    if row.get("per_device_train_batch_size"):
        parts.append(f"micro batch {row['per_device_train_batch_size']} x accumulation "
                     f"{row['gradient_accumulation_steps']}")
    return ", ".join(parts)


def plan_report(record: Dict[str, Any]) -> str:
    """The decision and every candidate with its estimated memory, as printed before training and by medgpt
    estimate hardware=auto."""
    m = record["machine"]
    where = f"{m['gpus']} GPU(s) x {m['memory_gb']:.1f} GB" if m["gpus"] else f"CPU, {m['memory_gb']:.1f} GB RAM"
    lines = [f"hardware=auto for {record['model']} ({record['parameters'] / 1e6:,.1f}M parameters, max_length "
             f"{record['max_length']}, global batch {record['global_batch_size']}) on {where} ({m['source']}; "
             f"usable {m['usable_gb']:.1f} GB, {m['precision']})",
             f"chosen: {record['chosen']['label']}", f"why: {record['why']}",
             f"  {'method':<8}{'sharding':<25}{'ckpt':<6}{'batch x acc':<13}{'GB':>8}  verdict"]
    for r in record["candidates"]:
        batch = (f"{r['per_device_train_batch_size']} x {r['gradient_accumulation_steps']}"
                 if r["per_device_train_batch_size"] else "-")
        memory = f"{r['memory_gb']:.1f}" if r["memory_gb"] is not None else "-"
        lines.append(f"  {r['method']:<8}{r['sharding']:<25}{'yes' if r['gradient_checkpointing'] else 'no':<6}"
                     f"{batch:<13}{memory:>8}  {r['verdict']}")
    return "\n".join(lines)


def table_rows() -> List[tuple]:
    """(method, model, table GB, our GB) for every cell of MedicalGPT's VRAM table."""
    rows = []
    for method, sizes in MEDICALGPT_TABLE.items():
        cfg = compose(TABLE_HARDWARE[method])
        for name, expected in sizes.items():
            cfg.model.name = name
            est = estimate_run(cfg, seq=TABLE_SEQ, batch=TABLE_BATCH, gpus=1, precision="bf16")
            rows.append((method, name, expected, est.total / GB))
    return rows


def compose(overrides):
    """The run config as train.py composes it (Hydra Compose API)."""

    return compose_run(overrides)


@command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="medgpt estimate", description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="the same overrides as train.py (model=... hardware=...)")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs the run is spread over (ZeRO partitioning)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sample (default: the run's max_length)")
    parser.add_argument("--batch", type=int, default=None, help="micro batch per GPU (default: the stage's)")
    parser.add_argument("--table", action="store_true", help="compare with MedicalGPT's VRAM table")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if opts.table:
        print(f"{'method':<8}{'model':<14}{'MedicalGPT GB':>14}{'medgpt GB':>11}{'diff':>8}")
        for method, name, expected, ours in table_rows():
            print(f"{method:<8}{name:<14}{expected:>14}{ours:>11.1f}{(ours - expected) / expected:>+8.0%}")
        return 0
    cfg = compose(opts.overrides)
    if cfg.hardware.get("auto") is not None:  # the plan training would make, and the chosen setting's terms
        settings = resolve(cfg, device_info(), planner=plan)
        print(plan_report(settings.plan))
        machine = settings.plan["machine"]
        est = estimate_run(cfg, settings, gpus=max(machine["gpus"], 1), seq=opts.seq, batch=opts.batch,
                           precision=machine["precision"], cuda=machine["gpus"] > 0)
        print(est.report(f"{cfg.model.name} x {settings.plan['chosen']['label']}"))
        return 0
    est = estimate_run(cfg, gpus=opts.gpus, seq=opts.seq, batch=opts.batch)
    deepspeed = cfg.hardware.deepspeed.name if cfg.hardware.deepspeed else "no deepspeed"
    print(est.report(f"{cfg.model.name} x hardware={cfg.hardware.name} ({deepspeed})"))
    return 0
