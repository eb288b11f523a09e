#!/bin/bash
# Pruning-aware pretraining, SmolLM-360M -> 134M (EfficientLLM-A-134M), on 4 nodes x 8 GPUs.
#   sbatch launch/pap_134m.sh                          # from the pap checkout
#   EXP_DIR=/shared/runs/pap_134m sbatch launch/pap_134m.sh
#   PAP_DRY_RUN=1 bash launch/pap_134m.sh               # print what would run
# Settings and preemption: launch/common.sh. From zero to a running job: docs/cluster.md.
#SBATCH --job-name=pap_134m
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=pap_134m-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
#SBATCH --requeue

PAP_RECIPE=configs/recipes/pap_134m.yaml
# shellcheck source=launch/common.sh
source "${PAP_HOME:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}}/launch/common.sh"
