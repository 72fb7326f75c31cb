#!/usr/bin/env bash
# constraints.txt from the environment the suite just passed in: every installed distribution pinned, except torch
# (the README installs it first, CPU or CUDA build) and CUDA runtime wheels.
#   pip install torch==2.13.0 && pip install -e ".[dev]" && pytest && bash scripts/freeze_constraints.sh
set -euo pipefail
cd "$(dirname "$0")/.."
{
    echo "# The versions CI tested (scripts/freeze_constraints.sh wrote this; python $(python -c 'import platform; print(platform.python_version())'))."
    echo "#   pip install torch==2.13.0 && pip install -e \".[dev]\" -c constraints.txt"
    pip freeze --exclude-editable 2>/dev/null | grep "==" | grep -v -iE '^(torch|nvidia-[a-z0-9-]+|triton)=='
} > constraints.txt
echo "constraints.txt: $(grep -c "==" constraints.txt) pins"
