# GPU image: NGC PyTorch brings CUDA torch, Transformer Engine, apex and flash-attn;
# pap adds megatron-core (pinned in setup.py) and its own code on top.
#   docker build -t pap .
#   docker run --gpus all --rm -it pap torchrun --nproc-per-node 8 -m pap.train --config configs/tiny.yaml
#   enroot import -o pap.sqsh dockerd://pap     # for Slurm + pyxis: PAP_CONTAINER=pap.sqsh (docs/cluster.md)
#
# The base release must ship a Transformer Engine that megatron-core 0.16.1 supports
# (transformer-engine>=2.9.0a0,<2.12.0): NGC PyTorch 25.11 (TE 2.9), 25.12 (TE 2.10) or
# 26.01 (TE 2.11); pap.env_check.NGC_PYTORCH records them and a test checks this line
# against megatron-core's declared requirements. 25.11 is Megatron-LM's own CI image for
# megatron-core 0.16 (Python 3.12, PyTorch 2.10, CUDA 13.0).
ARG NGC_PYTORCH=25.11
FROM nvcr.io/nvidia/pytorch:${NGC_PYTORCH}-py3

WORKDIR /workspace/pap
COPY setup.py ./
COPY pap ./pap
COPY megatron_patches ./megatron_patches
COPY data_prep ./data_prep
COPY configs ./configs
COPY launch ./launch
# NGC images pin their own packages through PIP_CONSTRAINT=/etc/pip/constraint.txt, which
# can make megatron-core's and transformers' requirements unresolvable; pap installs with it
# off (as Megatron-LM's install guide does), then proves that the image's CUDA torch, TE,
# flash-attn and apex are the ones it shipped and that everything imports. A missing or
# replaced piece fails the build here instead of running on slower fallbacks later.
RUN pip freeze | grep -iE '^(torch|transformer[-_]engine|flash[-_]attn|apex)[ =@]' > /tmp/image-stack.txt \
 && PIP_CONSTRAINT= pip install --no-cache-dir -e '.[hf]' \
 && python -m pap.env_check --gpu-stack --unchanged /tmp/image-stack.txt
ENV CUDA_DEVICE_MAX_CONNECTIONS=1
