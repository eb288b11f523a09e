# GPU image: NGC PyTorch brings CUDA torch, Transformer Engine, apex and flash-attn;
# pap adds megatron-core (pinned in setup.py) and its own code on top.
#   docker build -t pap .
#   docker run --gpus all --rm -it pap torchrun --nproc-per-node 8 -m pap.train --config configs/tiny.yaml
FROM nvcr.io/nvidia/pytorch:25.04-py3

WORKDIR /workspace/pap
COPY setup.py ./
COPY pap ./pap
COPY megatron_patches ./megatron_patches
COPY data_prep ./data_prep
COPY configs ./configs
COPY launch ./launch
# The image's torch satisfies setup.py's torch requirement, so pip keeps the CUDA build.
RUN pip install --no-cache-dir -e '.[hf]'
ENV CUDA_DEVICE_MAX_CONNECTIONS=1
