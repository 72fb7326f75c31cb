#!/usr/bin/env bash
# GPU checks of issue 4 (DeepSpeed, QLoRA, memory estimate), for a lent GPU; prints PASS/FAIL lines, ~2-3 min.
#   bash bench/gpu_check_deepspeed.sh      (on the lent GPU: build .whl/ here first with bench/gpu_wheels.sh and carry it)
# Runs: the GPU-marked tests (full+ZeRO-3 bf16 with consolidated save, LoRA+ZeRO-2, QLoRA-4+ZeRO-2, flash-attn
# error), QLoRA+ZeRO-3 refused before loading, and the estimator's figure next to the measured peak of one run.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then  # packages the GPU image lacks, carried as wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export OMP_NUM_THREADS=4 WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-$(mktemp -d)}
status=0
report() { if [ "$2" -eq 0 ]; then echo "PASS $1"; else echo "FAIL $1"; status=1; fi; }

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m pip list 2>/dev/null | grep -iE "^(pyarrow|regex|huggingface.hub|tokenizers|accelerate|torch) "  # the carried wheels' needs
python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'cuda', torch.cuda.is_available())"

python3 -m pytest tests/test_scaleout.py -m gpu -q -rA -p no:cacheprovider > "$OUT/pytest.log" 2>&1
grep -E "^(PASSED|FAILED|SKIPPED|ERROR)" "$OUT/pytest.log" | sed -E 's/^PASSED/PASS/; s/^(FAILED|ERROR)/FAIL/; s/^SKIPPED/SKIP/'
grep -qE "^(FAILED|ERROR)" "$OUT/pytest.log" && { status=1; tail -60 "$OUT/pytest.log"; }

python3 train.py hardware=qlora4 hardware/deepspeed=zero3 logger=none output_root="$OUT" > "$OUT/qz3.log" 2>&1
rc=$?; grep -q "ZeRO-3 is not supported" "$OUT/qz3.log" && [ $rc -eq 2 ]; report "qlora4 + zero3 refused at check time (exit $rc)" $?

# estimate vs measured peak on a ~180M-parameter (Qwen2-0.5B width, 12 layers) random model, full fine-tuning, bf16, batch 4 x 512 tokens
SHAPE=(model.tiny.hidden_size=896 model.tiny.intermediate_size=4864 model.tiny.num_hidden_layers=12
       model.tiny.num_attention_heads=14 model.tiny.num_key_value_heads=2)
python3 -m medgpt.estimate "${SHAPE[@]}" hardware=full hardware.gradient_checkpointing=false --batch 4 --seq 512 \
    | tee "$OUT/estimate.txt"
python3 train.py "${SHAPE[@]}" hardware=full hardware.gradient_checkpointing=false logger=none output_root="$OUT" \
    stage.args.max_steps=5 stage.args.per_device_train_batch_size=4 data.max_length=512 data.eval_split=0 \
    > "$OUT/peak.log" 2>&1
report "full bf16 run for the peak-memory comparison" $?
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
m = json.loads(next(out.glob("runs/*/*/metrics.json")).read_text())
est = [l for l in (out / "estimate.txt").read_text().splitlines() if "total per GPU" in l][0].split()[-2]
print(f"INFO estimate {est} GB vs measured peak allocated {m.get('peak_memory_mb', 0) / 1000:.2f} GB "
      f"(estimate includes 1 GB CUDA context + 20% allocator slack; the demo data's samples are shorter than 512)")
PY
echo "logs in $OUT"
exit $status
