#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, jax.distributed
# initialised from SLURM's environment, the same train command as on one CPU.
#
#   launch/slurm_gpu.sh --nodes=4 --gpus-per-node=8 --partition=gpu -- \
#     --gin_file=gin_configs/mov_t5_3b.gin --gin.MODEL_DIR=/shared/runs/mov_t5_3b \
#     --gin.INITIAL_CHECKPOINT_PATH=/shared/ckpt/t5-v1_1-lm-adapt-xl
#
# --data-source, --data-dir, --vocabulary and --initial-checkpoint set the gin
# macros DATA_SOURCE, DATA_DIR, VOCABULARY and INITIAL_CHECKPOINT_PATH (local
# paths on a shared filesystem, or gs:// URLs). The job first runs
# `python -m moe_jax.preflight` on one node (the mixture's data, the
# vocabulary, the initial checkpoint's metadata, MODEL_DIR writable) and trains
# only if it passes (--skip-preflight skips it).
#
# Time limits and preemption: Slurm sends the training processes SIGTERM
# --signal-seconds (default 300) before the time limit (and on preemption);
# the trainer saves at the next step and exits 75, and the job requeues
# itself (scontrol requeue): the rerun resumes from that checkpoint, with the
# log appended to the same file. Any other exit code ends the job.
#
# --dry-run prints the sbatch script instead of submitting it.
set -euo pipefail
NODES=1 GPUS=8 PARTITION="" TIME="72:00:00" DRY=0 PREFLIGHT=1 SIGNAL_SECONDS=300
INPUTS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes=*) NODES="${1#*=}" ;;
    --gpus-per-node=*) GPUS="${1#*=}" ;;
    --partition=*) PARTITION="${1#*=}" ;;
    --time=*) TIME="${1#*=}" ;;
    --dry-run) DRY=1 ;;
    --skip-preflight) PREFLIGHT=0 ;;
    --signal-seconds=*) SIGNAL_SECONDS="${1#*=}" ;;
    --data-source=*) INPUTS+=("--gin.DATA_SOURCE=${1#*=}") ;;
    --data-dir=*) INPUTS+=("--gin.DATA_DIR=${1#*=}") ;;
    --vocabulary=*) INPUTS+=("--gin.VOCABULARY=${1#*=}") ;;
    --initial-checkpoint=*) INPUTS+=("--gin.INITIAL_CHECKPOINT_PATH=${1#*=}") ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (options before --, train flags after)" >&2; exit 2 ;;
  esac
  shift
done
[[ $# -gt 0 ]] || { echo "error: give the train flags after --" >&2; exit 2; }
TRAIN_ARGS=$(printf ' %q' "$@" ${INPUTS[@]+"${INPUTS[@]}"})
PREFLIGHT_LINE=""
[[ $PREFLIGHT == 1 ]] && PREFLIGHT_LINE="srun --nodes=1 --ntasks=1 .venv/bin/python -m moe_jax.preflight$TRAIN_ARGS || exit 2"
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
SCRIPT=$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=moe-jax
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS
#SBATCH --time=$TIME
#SBATCH --signal=TERM@$SIGNAL_SECONDS
#SBATCH --requeue
#SBATCH --open-mode=append
${PARTITION:+#SBATCH --partition=$PARTITION}
cd $REPO_DIR
$PREFLIGHT_LINE
srun env MOE_JAX_DISTRIBUTED=1 .venv/bin/python -m moe_jax.train$TRAIN_ARGS
code=\$?
if [[ \$code == 75 ]]; then  # stopped by a signal after saving: run again, resuming
  echo "preempted (exit 75): requeueing job \$SLURM_JOB_ID"
  scontrol requeue \$SLURM_JOB_ID
  exit 0
fi
exit \$code
SBATCH
)
if [[ $DRY == 1 ]]; then printf '%s\n' "$SCRIPT"; else printf '%s\n' "$SCRIPT" | sbatch; fi
