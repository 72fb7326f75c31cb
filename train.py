"""Train a medical chat model: one command per stage, composed from model x stage x data x hardware.

    python train.py                                        # SFT of the embedded tiny model on the demo data
    python train.py stage=dpo model=qwen1.5-7b hardware=qlora4 --cfg job
"""
from medgpt.cli import train

if __name__ == "__main__":
    train()
