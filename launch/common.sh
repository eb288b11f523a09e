# shellcheck shell=bash
# Shared body of the pap Slurm scripts (launch/pap_*.sh source it after setting PAP_RECIPE).
#
# One `srun` task per node starts one `torchrun` agent, and the agents meet through a c10d
# rendezvous on the first node of the allocation. Every setting below can be overridden
# from the environment of `sbatch`:
#
#   PAP_HOME        the pap checkout (default: the directory sbatch was called from)
#   PAP_CONFIG      the YAML config (default: the script's recipe)
#   EXP_DIR         experiment dir: checkpoints, TensorBoard, logs and a record of each
#                   launch (default: runs/<recipe name>); save and load share it, so a
#                   requeued job resumes
#   SOURCE_CKPT     the model to prune (checkpoint.init_from; default: the recipe's)
#   DATA_BLEND      a blend file as `python -m data_prep.blend --output` writes it
#                   ("weight prefix weight prefix ..."; default: the recipe's blend)
#   TP, PP          tensor / pipeline parallel sizes (default: the recipe's)
#   GPUS_PER_NODE   processes per node (default 8)
#   MASTER_PORT     rendezvous port (default: derived from the job id)
#   PAP_OVERRIDES   more config overrides, space separated (e.g. "train.iters=1000")
#   PAP_PYTHON      the Python that has pap installed (default: python; in the
#                   container, the image's)
#   PAP_CONTAINER   run on the nodes inside this image (pyxis/enroot: `srun
#                   --container-image`), e.g. a .sqsh made from the Dockerfile by
#                   `enroot import dockerd://pap`; training and the launch record (config,
#                   pip freeze, nvidia-smi) both run in it. Unset: the host's PAP_PYTHON.
#   PAP_CONTAINER_MOUNTS  more `src:dst` mounts, comma separated (data, source checkpoint);
#                   PAP_HOME and EXP_DIR are always mounted at the same paths
#   PAP_SOCKET_IFNAME  the network interface for gloo and NCCL's bootstrap (e.g. ib0);
#                   sets GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME where those are unset
#                   (pap runs gloo groups beside NCCL; on multi-homed nodes both must bind
#                   the interface the other nodes reach). Either may also be set directly.
#   PAP_DRY_RUN=1   print the resolved command line and config, launch nothing
#
# Preemption: `#SBATCH --signal=B:USR1@...` warns this shell before the time limit. The
# trap touches $EXP_DIR/exit_requested; the trainer sees it after the current step, every
# rank saves the same checkpoint and exits, and this script requeues the job, which
# resumes from that checkpoint. The signal is not forwarded to srun: torchrun's agent
# would die on it before the workers could save.

set -euo pipefail

PAP_HOME=${PAP_HOME:-${SLURM_SUBMIT_DIR:-$(pwd)}}
cd "$PAP_HOME"

RECIPE_NAME=$(basename "${PAP_RECIPE%.yaml}")
PAP_CONFIG=${PAP_CONFIG:-$PAP_RECIPE}
EXP_DIR=${EXP_DIR:-runs/$RECIPE_NAME}
PAP_PYTHON=${PAP_PYTHON:-python}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${SLURM_NNODES:-1}
JOB_ID=${SLURM_JOB_ID:-local}
RESTART=${SLURM_RESTART_COUNT:-0}
if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
  MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
else
  MASTER_ADDR=localhost
fi
# A port per job, so two jobs sharing a first node do not collide.
MASTER_PORT=${MASTER_PORT:-$(( 20000 + ${SLURM_JOB_ID:-9500} % 20000 ))}
EXIT_FILE="$EXP_DIR/exit_requested"

# NCCL and CUDA as Megatron-LM recommends; each can be overridden from the environment.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}  # TP/SP communication overlap order
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}  # a dead rank fails the job
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-19}
export NCCL_IB_SL=${NCCL_IB_SL:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1
if [[ -n "${PAP_SOCKET_IFNAME:-}" ]]; then
  export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$PAP_SOCKET_IFNAME}
  export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$PAP_SOCKET_IFNAME}
fi

# Inside a container (pyxis): the same paths in and out, so configs, logs and checkpoints
# written in the container are where this script looks for them.
container=()
if [[ -n "${PAP_CONTAINER:-}" ]]; then
  case "$EXP_DIR" in /*) exp_path=$EXP_DIR ;; *) exp_path=$PAP_HOME/$EXP_DIR ;; esac
  mounts="$PAP_HOME:$PAP_HOME"
  [[ "$exp_path" == "$PAP_HOME"/* ]] || mounts+=",$exp_path:$exp_path"
  mounts+="${PAP_CONTAINER_MOUNTS:+,$PAP_CONTAINER_MOUNTS}"
  container=(--container-image="$PAP_CONTAINER" --container-mounts="$mounts" --container-workdir="$PAP_HOME")
fi

# Runs a launch-record step where training runs: in the container on one node, or here.
on_node() {
  if ((${#container[@]})); then
    srun --nodes=1 --ntasks=1 "${container[@]}" "$@"
  else
    "$@"
  fi
}

overrides=("checkpoint.dir=$EXP_DIR" "train.exit_file=$EXIT_FILE")
[[ -n "${SOURCE_CKPT:-}" ]] && overrides+=("checkpoint.init_from=$SOURCE_CKPT")
[[ -n "${TP:-}" ]] && overrides+=("parallel.tp=$TP")
[[ -n "${PP:-}" ]] && overrides+=("parallel.pp=$PP")
if [[ -n "${DATA_BLEND:-}" ]]; then
  [[ -f "$DATA_BLEND" ]] || { echo "error: DATA_BLEND=$DATA_BLEND: no such file" >&2; exit 2; }
  overrides+=("data.blend=$(grep -v '^#' "$DATA_BLEND" | tr '\n' ' ')")
fi
# PAP_OVERRIDES is a space-separated list by design (values never contain spaces).
read -r -a extra <<< "${PAP_OVERRIDES:-}"
overrides+=("${extra[@]}")

train=("$PAP_PYTHON" -m torch.distributed.run
  --nnodes "$NNODES" --nproc-per-node "$GPUS_PER_NODE"
  --rdzv-id "$JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"
  -m pap.train --config "$PAP_CONFIG" "${overrides[@]}")

if [[ "${PAP_DRY_RUN:-0}" == 1 ]]; then
  echo "# pap launch (dry run): job $JOB_ID, $NNODES node(s) x $GPUS_PER_NODE processes, experiment $EXP_DIR"
  echo "srun --nodes=$NNODES --ntasks-per-node=1 --kill-on-bad-exit=1 \\"
  ((${#container[@]})) && printf ' %q' "${container[@]}" && echo " \\"
  printf ' %q' "${train[@]}"
  echo
  for name in GLOO_SOCKET_IFNAME NCCL_SOCKET_IFNAME; do
    [[ -n "${!name:-}" ]] && echo "# $name=${!name}"
  done
  echo "# resolved config:"
  "$PAP_PYTHON" -m pap.train --config "$PAP_CONFIG" "${overrides[@]}" --print-config
  exit 0
fi

# A record of this launch: script, config, environment, software and hardware.
record="$EXP_DIR/launches/$JOB_ID-$RESTART"
mkdir -p "$record" "$EXP_DIR/logs"
cp "$0" "$record/job-script.sh"  # under sbatch, $0 is Slurm's copy of what was submitted
cp "$PAP_HOME/launch/common.sh" "$record/"
on_node "$PAP_PYTHON" -m pap.train --config "$PAP_CONFIG" "${overrides[@]}" --print-config > "$record/config.yaml"
printf '%q ' srun "${container[@]}" "${train[@]}" > "$record/command.txt"
env | sort > "$record/env.txt"
on_node "$PAP_PYTHON" -m pip freeze > "$record/pip-freeze.txt" 2>&1 || true
git -C "$PAP_HOME" rev-parse HEAD > "$record/git-sha.txt" 2>&1 || echo "not a git checkout" > "$record/git-sha.txt"
on_node nvidia-smi > "$record/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi on the nodes" > "$record/nvidia-smi.txt"

rm -f "$EXIT_FILE"  # a request from before a requeue is done with
requeue=0
# shellcheck disable=SC2317  # invoked by the trap below
on_warning() {
  echo "pap launch: USR1 at $(date -u +%FT%TZ): asking the trainer to save and stop"
  requeue=1
  touch "$EXIT_FILE"
}
trap on_warning USR1

echo "pap launch: job $JOB_ID (restart $RESTART), $NNODES node(s) x $GPUS_PER_NODE, rendezvous $MASTER_ADDR:$MASTER_PORT"
srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 "${container[@]}" "${train[@]}" \
  > >(tee -a "$EXP_DIR/logs/train-$JOB_ID-$RESTART.log") 2>&1 &
srun_pid=$!
# `wait` returns early when the trap runs; wait again until srun itself has ended.
status=0
while true; do
  wait "$srun_pid" && status=0 || status=$?
  kill -0 "$srun_pid" 2>/dev/null || break
done

if [[ "$requeue" == 1 && -n "${SLURM_JOB_ID:-}" ]]; then
  echo "pap launch: trainer stopped with status $status; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
if [[ "$status" != 0 ]]; then
  # torchrun's failure report (~40 lines) ends the log; the cause is pap's first `error:` line.
  log="$EXP_DIR/logs/train-$JOB_ID-$RESTART.log"
  first_error=$(grep -m1 '^error: ' "$log" || true)
  echo "pap launch: training failed with status $status${first_error:+; first error: ${first_error#error: }} (log $log)"
fi
exit "$status"
