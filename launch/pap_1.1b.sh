#!/bin/bash
# Pruning-aware pretraining, SmolLM-1.7B -> 1.1B (EfficientLLM-A-1.1B), on 8 nodes x 8 GPUs.
#   sbatch launch/pap_1.1b.sh                          # from the pap checkout
#   EXP_DIR=/shared/runs/pap_1.1b TP=2 sbatch launch/pap_1.1b.sh
#   PAP_DRY_RUN=1 bash launch/pap_1.1b.sh               # print what would run
# Settings and preemption: launch/common.sh. From zero to a running job: docs/cluster.md.
#SBATCH --job-name=pap_1.1b
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=pap_1.1b-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
#SBATCH --requeue

PAP_RECIPE=configs/recipes/pap_1.1b.yaml
# shellcheck source=launch/common.sh
source "${PAP_HOME:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}}/launch/common.sh"
