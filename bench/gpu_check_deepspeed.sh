#!/usr/bin/env bash
# GPU checks of issue 4 (DeepSpeed, QLoRA, memory estimate), for a lent GPU; prints PASS/FAIL lines, ~2-3 min.
#   bash bench/gpu_check_deepspeed.sh      (on the lent GPU; bench/gpu_check.sh calls it after installing .carry/)
# Runs: the GPU-marked tests (full+ZeRO-3 bf16 with a consolidated save that reloads and generates, LoRA+ZeRO-2,
# QLoRA-4+ZeRO-2, flash-attn error), QLoRA+ZeRO-3 refused before loading, and the estimator's figure next to the
# measured peak of one run. Logs and run folders go to $WORK (a temporary folder unless set).
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
status=0
report() { if [ "$2" -eq 0 ]; then echo "PASS $1"; else echo "FAIL $1"; status=1; fi; }

python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'cuda', torch.cuda.is_available())"

# estimate vs measured peak on a ~180M-parameter (Qwen2-0.5B width, 12 layers) random model, full fine-tuning, bf16, batch 4 x 512 tokens
SHAPE=(model.tiny.hidden_size=896 model.tiny.intermediate_size=4864 model.tiny.num_hidden_layers=12
       model.tiny.num_attention_heads=14 model.tiny.num_key_value_heads=2)
(python3 train.py hardware=qlora4 hardware/deepspeed=zero3 logger=none output_root="$WORK" > "$WORK/qz3.log" 2>&1
echo $? > "$WORK/qz3.rc"
python3 -m medgpt estimate "${SHAPE[@]}" hardware=full hardware.gradient_checkpointing=false --batch 4 --seq 512 \
    | tee "$WORK/estimate.txt"
python3 train.py "${SHAPE[@]}" hardware=full hardware.gradient_checkpointing=false logger=none output_root="$WORK/peak" \
    stage.args.max_steps=5 stage.args.per_device_train_batch_size=4 data.max_length=512 data.eval_split=0 \
    > "$WORK/peak.log" 2>&1; echo $? > "$WORK/peak.rc") &
python3 -m pytest tests/test_scaleout.py -m gpu -q -rA -p no:cacheprovider --basetemp="$WORK/pytest" > "$WORK/pytest.log" 2>&1
grep -E "^(PASSED|FAILED|SKIPPED|ERROR)" "$WORK/pytest.log" | sed -E 's/^PASSED/PASS/; s/^(FAILED|ERROR)/FAIL/; s/^SKIPPED/SKIP/'
grep -qE "^(FAILED|ERROR)" "$WORK/pytest.log" && { status=1; tail -60 "$WORK/pytest.log"; }

wait  # for the refusal and peak-memory runs beside the tests (peak allocated memory is per process)
rc=$(cat "$WORK/qz3.rc"); grep -q "ZeRO-3 is not supported" "$WORK/qz3.log" && [ "$rc" -eq 2 ]
report "qlora4 + zero3 refused at check time (exit $rc)" $?
report "full bf16 run for the peak-memory comparison" "$(cat "$WORK/peak.rc")"
python3 - "$WORK" <<'PY'
import json, sys, pathlib
work = pathlib.Path(sys.argv[1])
m = json.loads(next(work.glob("peak/runs/*/*/metrics.json")).read_text())
est = [l for l in (work / "estimate.txt").read_text().splitlines() if "total per GPU" in l][0].split()[-2]
print(f"INFO estimate {est} GB vs measured peak allocated {m.get('peak_memory_mb', 0) / 1000:.2f} GB "
      f"(estimate includes 1 GB CUDA context + 20% allocator slack; the demo data's samples are shorter than 512)")
PY
echo "logs in $WORK"
exit $status
