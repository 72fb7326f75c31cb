"""Fast paths stay correct: varlen attention over packed rows, lazy imports for --cfg job."""
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from medgpt.modeling.attention import cu_seqlens_from_positions


def test_cu_seqlens_from_packed_positions():
    cu, longest = cu_seqlens_from_positions(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]))
    assert cu.tolist() == [0, 3, 5, 7, 10] and longest == 3
    # a row that does not start at 0 (continuation) still starts a new sequence at the row boundary
    cu, _ = cu_seqlens_from_positions(torch.tensor([[3, 4, 0], [0, 1, 2]]))
    assert cu.tolist() == [0, 2, 3, 6]


def test_cfg_job_never_imports_torch_or_trl():
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "train.py"), "--cfg", "job"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and "stage:" in result.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "trl", "transformers", "peft", "datasets"}, imported & {"torch", "trl"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_varlen_attention_matches_sdpa_on_packed_rows(tiny_dir):
    from transformers import AutoModelForCausalLM

    from medgpt.modeling.attention import NAME, register

    register()
    ids = torch.randint(5, 1000, (1, 24), device="cuda")
    positions = torch.tensor([[*range(10), *range(8), *range(6)]], device="cuda")
    logits = {}
    for impl in ("sdpa", NAME):
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16, attn_implementation=impl).cuda()
        with torch.no_grad():
            logits[impl] = model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()
    torch.testing.assert_close(logits[NAME], logits["sdpa"], atol=3e-2, rtol=3e-2)
