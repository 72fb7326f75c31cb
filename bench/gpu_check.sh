#!/usr/bin/env bash
# GPU verification (issue 22) in one device call, ~9 min on an H200; a summary on stdout, each part's log in $OUT.
#   bash bench/gpu_carry.sh                                  # here, first: .carry/ (wheels, Qwen tokenizer, samples)
#   device run: command="bash bench/gpu_check.sh", carry=[".carry"], timeout_s=590
#   E2E_MODES=medgpt,medgpt_lora bash bench/gpu_check.sh e2e,deepspeed     # some parts and modes only (a rerun)
# Parts: throughput  bench/sft_throughput.py --device cuda, modes b_group_len,c_no_skip,c_default (the bench loop)
#        e2e         bench/sft_e2e.py --device cuda: python train.py (full, no checkpointing, LoRA, QLoRA-4) beside
#                    MedicalGPT's Trainer (a) and group_by_length (b) on a random Qwen2.5-1.5B shape, real tokenizer
#        deepspeed   bench/gpu_check_deepspeed.sh (ZeRO-3 final/ reloads and generates, LoRA/QLoRA + ZeRO-2, ...)
#        alignment   stage=dpo and stage=grpo with medgpt's defaults on the same 1.5B shape
#        vllm        (optional, not in the default list: bash bench/gpu_check.sh vllm) stage.args.use_vllm=true,
#                    vllm_mode=colocate for grpo, ppo (RLOO) and distill on the 1.5B shape; without vLLM on the
#                    image: each run must stop with exit 2 and the one-line "needs vLLM" error
#        liger       (optional, not in the default list) Liger's fused linear cross-entropy (the liger extra, carried
#                    as a wheel) as SFT's loss on CUDA: tests/test_fused_loss.py -m gpu, and bench/memory.py on CUDA
#        fsdp        (optional, not in the default list) FSDP2 on the visible GPUs: tests/test_fsdp.py -m gpu (SFT
#                    full/LoRA/QLoRA-4 and DPO full/LoRA train, final/ reloads and generates; a killed LoRA run
#                    resumes exactly and merges), hardware=auto's plan for this machine:  bash bench/gpu_check.sh fsdp
set -uo pipefail
cd "$(dirname "$0")/.."
PARTS=${1:-deepspeed,e2e,throughput,alignment}  # in this order
OUT=${OUT:-$(mktemp -d)}
export WORK=/tmp/gpu_check MODEL=/tmp/gpu_check/qwen2.5-1.5b-random TOKENIZER=/tmp/gpu_check/tokenizer-qwen3
mkdir -p "$WORK" "$TOKENIZER"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MEDGPT_SAMPLES=$PWD/.carry/samples MEDGPT_CACHE=$WORK/cache
if [ -d .carry/wheels ] && [ ! -d /tmp/site/trl ]; then  # packages the image lacks, once per machine
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .carry/wheels/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
[ -f "$TOKENIZER/tokenizer.json" ] || { gunzip -c .carry/tokenizer-qwen3/tokenizer.json.gz > "$TOKENIZER/tokenizer.json" \
    && cp .carry/tokenizer-qwen3/tokenizer_config.json "$TOKENIZER/"; }
step() { echo; echo "=== $1 ($(date +%T))"; }

step setup
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch, transformers, trl, peft, datasets, pyarrow, accelerate, bitsandbytes
print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'trl',
      trl.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__,
      'accelerate', accelerate.__version__, 'bitsandbytes', bitsandbytes.__version__)"
python3 -c "import vllm" 2>/dev/null && echo "vllm: installed" || echo "vllm: not on the image (and too large to carry)"
timeout 120 python3 bench/sft_e2e.py --device cuda --build-only --cache "$MODEL" --tokenizer "$TOKENIZER" \
    && echo "model: $(du -sh "$MODEL" | cut -f1) at $MODEL"

part_throughput() {
    step "throughput: bench loop, Qwen2.5-1.5B shape, 8 x 1024, 20 timed steps"
    timeout 100 python3 bench/sft_throughput.py --device cuda --steps 20 --warmup 3 \
        --modes b_group_len,c_no_skip,c_default > "$OUT/throughput.log" 2>&1
    echo "exit $?"; grep -vE "^\{|Warning|warn" "$OUT/throughput.log" | tail -8
}

part_e2e() {
    step "e2e: real trainers, Qwen2.5-1.5B shape, Qwen3 tokenizer, 8 x 1024, 40 steps a mode"
    timeout 300 python3 bench/sft_e2e.py --device cuda --cache "$MODEL" --tokenizer "$TOKENIZER" --max-steps 40 \
        ${E2E_MODES:+--modes "$E2E_MODES"} > "$OUT/e2e.log" 2>&1
    echo "exit $?"; grep -A12 "^device:" "$OUT/e2e.log" || grep -E '^\{"mode"' "$OUT/e2e.log"
}

part_deepspeed() {
    step "deepspeed checks"
    timeout 300 bash bench/gpu_check_deepspeed.sh > "$OUT/deepspeed.log" 2>&1
    echo "exit $?"; grep -E "^(PASS|FAIL|SKIP|INFO)" "$OUT/deepspeed.log"
}

part_alignment() {  # completion, seconds per step and peak memory of DPO and GRPO with medgpt's defaults
    step "alignment: stage=dpo and stage=grpo, Qwen2.5-1.5B shape"
    alignment dpo data=medical_dpo stage.args.max_steps=20 stage.args.logging_steps=5
    alignment grpo data=medical_grpo stage.args.max_steps=4 stage.args.logging_steps=1
    cat "$WORK/dpo.log" "$WORK/grpo.log" > "$OUT/alignment.log"
}

part_vllm() {  # colocated vLLM generation through the stage config (docs/alignment.md), or its clear refusal
    step "vllm: use_vllm=true, vllm_mode=colocate; grpo, ppo (RLOO), distill; Qwen2.5-1.5B shape"
    local common=(stage.args.use_vllm=true stage.args.vllm_mode=colocate stage.args.vllm_gpu_memory_utilization=0.25
                  stage.args.max_steps=2 stage.args.logging_steps=1 stage.args.max_completion_length=64
                  stage.args.vllm_max_model_length=1024)
    if python3 -c "import vllm" 2>/dev/null; then
        alignment grpo data=grpo_demo stage.args.num_generations=4 "${common[@]}"
        alignment ppo data=ppo_demo stage.args.num_generations=4 "${common[@]}"
        alignment distill data=distill_demo stage.teacher="$MODEL" "${common[@]}"
        cat "$WORK/grpo.log" "$WORK/ppo.log" "$WORK/distill.log" > "$OUT/vllm.log"
        grep -hiE "vllm|colocate" "$OUT/vllm.log" | grep -viE "warn" | head -5
    else
        for stage in grpo ppo distill; do
            timeout 120 python3 train.py stage=$stage hardware=full model=qwen2.5-0.5b model.path="$MODEL" logger=none \
                output_root="$WORK/vllm-$stage" \
                stage.teacher="$MODEL" "${common[@]}" > "$WORK/vllm-$stage.log" 2>&1
            local rc=$? last; last=$(tail -n 1 "$WORK/vllm-$stage.log")
            if [ $rc -eq 2 ] && [[ $last == "error: stage.args.use_vllm=true needs vLLM"* ]]; then
                echo "PASS stage=$stage refused without vLLM: $last"
            else
                echo "FAIL stage=$stage exit $rc: $last"
            fi
        done
    fi
}

part_liger() {  # issue 18: the chunked loss hands SFT's loss to Liger's kernel on CUDA where liger-kernel is installed
    step "liger: $(python3 -c 'import liger_kernel, importlib.metadata as m; print(m.version("liger-kernel"))' 2>&1)"
    timeout 240 python3 -m pytest tests/test_fused_loss.py -m gpu -q -rA -p no:cacheprovider > "$OUT/liger.log" 2>&1
    echo "exit $?"; grep -E "^(PASSED|FAILED|SKIPPED|ERROR)" "$OUT/liger.log"
    grep -qE "^(FAILED|ERROR)" "$OUT/liger.log" && tail -40 "$OUT/liger.log"
    mkdir -p "$MEDGPT_CACHE/official/qwen3" && cp "$TOKENIZER"/* "$MEDGPT_CACHE/official/qwen3/"  # no npm there
    timeout 240 python3 bench/memory.py --device cuda 2>&1 | tail -12
}

part_fsdp() {  # issue 23: FSDP2 through the Trainer (accelerate), which runs FSDP on GPUs only
    step "fsdp: FSDP2 full_shard on $(python3 -c 'import torch; print(torch.cuda.device_count())') GPU(s)"
    timeout 420 python3 -m pytest tests/test_fsdp.py -m gpu -q -rA -p no:cacheprovider --basetemp="$WORK/fsdp" \
        > "$OUT/fsdp.log" 2>&1
    echo "exit $?"; grep -E "^(PASSED|FAILED|SKIPPED|ERROR)" "$OUT/fsdp.log"
    grep -qE "^(FAILED|ERROR)" "$OUT/fsdp.log" && tail -60 "$OUT/fsdp.log"
    timeout 60 python3 -m medgpt estimate model=qwen2.5-7b hardware=auto | head -4  # the plan for this machine
}

alignment() {
    local stage=$1; shift
    timeout 200 python3 train.py stage=$stage hardware=full model=qwen2.5-0.5b model.path="$MODEL" logger=none \
        output_root="$WORK/$stage" "$@" > "$WORK/$stage.log" 2>&1
    echo "stage=$stage exit $? ($*)"
    python3 - "$WORK/$stage" <<'PY'
import json, sys, pathlib
for path in pathlib.Path(sys.argv[1]).glob("runs/*/*/metrics.json"):
    m = json.loads(path.read_text())
    if m.get("status") != "completed":
        print("  FAILED:", m.get("error")); continue
    logs = [h for h in json.loads((path.parent / "history.json").read_text())["log_history"] if "loss" in h]
    keys = ("loss", "rewards/margins", "rewards/accuracies", "reward", "kl", "completions/mean_length")
    print(f"  steps {m['global_step']}, {m['train_runtime'] / m['global_step']:.2f} s/step, "
          f"peak {m['peak_memory_mb'] / 1024:.1f} GB, first step after {m.get('seconds_to_first_step')} s")
    for h in (logs[0], logs[-1]) if logs else ():
        print("  step", h.get("step"), {k: round(h[k], 4) for k in keys if k in h})
PY
}

for part in ${PARTS//,/ }; do "part_$part"; done
step done
