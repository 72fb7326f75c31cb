#!/usr/bin/env bash
# Wheels the lent GPU image lacks (DeepSpeed, TRL, Hydra, datasets, bitsandbytes, ...), at this machine's versions,
# into .whl/ (git-ignored) so a device call can carry them; bench/gpu_check_deepspeed.sh installs them there.
#   bash bench/gpu_wheels.sh && du -sh .whl        # must stay under the device tool's 64 MiB carry limit
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
rm -rf .whl && mkdir .whl
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
# The image has torch, transformers, peft, accelerate, tokenizers, safetensors, pyarrow, fsspec, xxhash, msgpack,
# py-cpuinfo, psutil, ninja (KINDS.md); transformers/peft travel too, because ours are newer than its.
for name in trl hydra-core omegaconf datasets dill multiprocess hjson pydantic pydantic-core annotated-types \
            typing-inspection bitsandbytes transformers peft; do
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$name==$(version "$name")"
done
# sdists only: built here into pure-Python wheels (DeepSpeed compiles its CUDA ops on first use, with the image's nvcc)
DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation -w .whl \
    "deepspeed==$(version deepspeed)" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
ls .whl && du -sh .whl
