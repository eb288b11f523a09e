"""pap: pruning-aware pretraining on megatron-core."""

from setuptools import find_packages, setup

# The one place the megatron-core version is stated: 0.16.1 is the newest release that
# supports Python 3.11 (0.17+ need Python >= 3.12). megatron_patches are written against it.
MEGATRON_CORE = "megatron-core==0.16.1"
# Hugging Face libraries at the versions the tests ran with (conversion and export must give
# the same logits; a new transformers can change a model class under us).
TRANSFORMERS = "transformers==5.24.0"
TOKENIZERS = "tokenizers==0.23.3"
# `python -m pap.eval harness`: lm-evaluation-harness with its Hugging Face model class
# (accelerate, peft). 0.4.13, the newest release, installs beside transformers 5.24.0 and
# torch 2.13.0 without changing either. It sits with the pinned transformers in the `hf` and
# `dev` extras, not in install_requires: it depends on transformers without a pin, so a bare
# `pip install pap` would otherwise get whatever transformers is newest.
LM_EVAL = "lm-eval[hf]==0.4.13"

setup(
    name="pap",
    version="0.1.0",
    description="Pruning-aware pretraining of Llama-style GPTs on megatron-core (TP/PP/DP)",
    python_requires=">=3.10",
    packages=find_packages(include=["pap", "pap.*", "megatron_patches", "megatron_patches.*",
                                    "data_prep", "data_prep.*"]),
    install_requires=[
        # torch is not pinned here: CPU machines install torch==2.13.0 first (Makefile),
        # GPU images (NGC PyTorch) bring their own CUDA build.
        "torch>=2.4",
        MEGATRON_CORE,
        "psutil",  # megatron-core's torch_dist checkpoint save needs it but does not declare it
        "numpy",
        "pyyaml",
        TOKENIZERS,
        "sentencepiece",
        "tensorboard",
        "safetensors",
        "pyarrow",  # data_prep: .parquet inputs
        "zstandard",  # data_prep: .jsonl.zst inputs
        "matplotlib",  # pap.plot
    ],
    extras_require={
        "hf": [TRANSFORMERS, LM_EVAL],
        "dev": ["pytest", "pytest-timeout", TRANSFORMERS, LM_EVAL],
    },
)
