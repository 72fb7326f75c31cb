"""medgpt: train medical chat models with the whole MedicalGPT pipeline from one Hydra entrypoint.

    python train.py                      # SFT of the embedded tiny model on the demo data
"""
__version__ = "0.1.0"
