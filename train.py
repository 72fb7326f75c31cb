"""Train a medical chat model: one command per stage, composed from model x stage x data x hardware.

    python train.py                                        # SFT of the embedded tiny model on the demo data
    python train.py stage=dpo model=qwen1.5-7b hardware=qlora4 --cfg job
"""
import sys

import hydra

from medgpt.config import normalize_overrides, register_configs

register_configs()
sys.argv = sys.argv[:1] + normalize_overrides(sys.argv[1:])


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    from medgpt.run import main as run

    return run(cfg)


if __name__ == "__main__":
    main()
