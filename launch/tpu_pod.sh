#!/usr/bin/env bash
# Create a Cloud TPU VM slice, install moe-jax on every worker and run the same
# train command on all of them (jax.distributed discovers the slice itself).
#
#   launch/tpu_pod.sh --name=mov-xl --zone=us-central2-b --type=v4-64 \
#     --repo=https://github.com/you/moe-jax.git -- \
#     --gin_file=gin_configs/mov_t5_3b.gin --gin.MODEL_DIR=gs://BUCKET/mov_t5_3b   (or a shared mount) \
#     --gin.INITIAL_CHECKPOINT_PATH=/ckpt/t5-v1_1-lm-adapt-xl
#
# Before the slice is created, the planner compiles the run for --type here
# with XLA:TPU (python -m moe_jax.plan --topology=TYPE, same flags; needs
# moe-jax with its tpu extra on this machine, no TPU): a run that does not fit
# the chips' memory stops here, before anything is booked. --skip-plan skips
# it; --python=PY names the interpreter (default: the repo's .venv, else python3).
#
# --dry-run prints the commands (planner included) instead of running them.
set -euo pipefail
NAME="" ZONE="" TYPE="v4-8" VERSION="tpu-ubuntu2204-base" REPO="" DRY=0 PLAN=1 PY=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --type=*) TYPE="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --dry-run) DRY=1 ;;
    --skip-plan) PLAN=0 ;;
    --python=*) PY="${1#*=}" ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (options before --, train flags after)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$NAME" && -n "$ZONE" && -n "$REPO" ]] || { echo "error: --name, --zone and --repo are required" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "error: give the train flags after --" >&2; exit 2; }
TRAIN_ARGS=$(printf ' %q' "$@")

run() { if [[ $DRY == 1 ]]; then printf '%s\n' "$*"; else eval "$@"; fi; }
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
if [[ $PLAN == 1 ]]; then
  [[ -n "$PY" ]] || { [[ -x "$REPO_DIR/.venv/bin/python" ]] && PY="$REPO_DIR/.venv/bin/python" || PY=python3; }
  if ! run "cd $(printf '%q' "$REPO_DIR") && $PY -m moe_jax.plan --topology=$TYPE$TRAIN_ARGS"; then
    echo "error: the planner refused this run on $TYPE (above); not creating the slice (--skip-plan to skip)" >&2
    exit 2
  fi
fi
SSH="gcloud compute tpus tpu-vm ssh $NAME --zone=$ZONE --worker=all --command"
run "gcloud compute tpus tpu-vm create $NAME --zone=$ZONE --accelerator-type=$TYPE --version=$VERSION"
run "$SSH \"git clone $REPO moe-jax && cd moe-jax && python3 -m venv .venv && .venv/bin/pip install -e . 'jax[tpu]==0.10.2' && .venv/bin/pip install --no-deps --ignore-requires-python promptsource==0.2.3\""
run "$SSH \"cd moe-jax && MOE_JAX_DISTRIBUTED=1 .venv/bin/python -m moe_jax.train$TRAIN_ARGS\""
