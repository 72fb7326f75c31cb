"""SFT tokens/s of the chunked labelled loss (medgpt's default since issue 18) against the loss it replaced (the
labelled positions' logits all at once), on bench/sft_throughput.py's CPU setup (Qwen2 shape, ~4k BPE vocabulary,
MedicalGPT's 1,000 SFT records, token-budget batches), the two modes taking turns a step at a time in one process.

    OMP_NUM_THREADS=1 python bench/loss_speed.py --steps 20
"""
import argparse
import sys
from unittest import mock

import sft_throughput as bench  # the bench this one reuses (this script's folder is on sys.path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="20")
    args = parser.parse_args()
    import torch.nn.functional as F

    from medgpt.training import losses

    batches_for, loss_function = bench.batches_for, bench.loss_function

    def all_at_once(hidden, weight, bias, targets):
        return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")

    def before(mode, model):
        if mode != "c_before":
            return loss_function(mode, model)

        def loss(inputs):
            with mock.patch.object(losses, "linear_cross_entropy", all_at_once):
                return losses.labelled_positions_loss(model, inputs)
        return loss, "labelled, at once"

    bench.OURS = bench.OURS + ("c_before",)
    bench.batches_for = lambda mode, *a: batches_for("c_default" if mode == "c_before" else mode, *a)
    bench.loss_function = before
    bench.peak_memory_gb = lambda mode, cache: float("nan")  # speed only: bench/memory.py measures memory
    sys.argv = [sys.argv[0], "--modes", "c_before,c_default", "--steps", args.steps]
    bench.main()


if __name__ == "__main__":
    main()
