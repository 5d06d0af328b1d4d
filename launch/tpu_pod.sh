#!/usr/bin/env bash
# Create a Cloud TPU VM slice, install moe-jax on every worker and run the same
# train command on all of them (jax.distributed discovers the slice itself).
#
#   launch/tpu_pod.sh --name=mov-xl --zone=us-central2-b --type=v4-64 \
#     --repo=https://github.com/you/moe-jax.git \
#     --data-dir=gs://BUCKET/kit --vocabulary=gs://BUCKET/spiece.model \
#     --initial-checkpoint=gs://BUCKET/t5-v1_1-lm-adapt-xl -- \
#     --gin_file=gin_configs/mov_t5_3b.gin --gin.MODEL_DIR=gs://BUCKET/mov_t5_3b
#
# A worker has the repository and nothing else: its inputs come from buckets
# (or a shared mount). --data-source (jsonl | hf | parquet:DIR | p3:DIR),
# --data-dir, --vocabulary and --initial-checkpoint become the gin macros
# DATA_SOURCE, DATA_DIR, VOCABULARY and INITIAL_CHECKPOINT_PATH of every
# command below. Before training, worker 0 runs a pre-flight: the planner on
# its own chips' type, then `python -m moe_jax.preflight` (the mixture's
# datasets in the source, the vocabulary, the initial checkpoint's metadata,
# MODEL_DIR writable); a failure stops there, with the slice left for you to
# fix or delete (--skip-preflight skips it; --skip-plan skips both planners).
#
# Before the slice is created, the planner compiles the run for --type here
# with XLA:TPU (python -m moe_jax.plan --topology=TYPE, same flags; needs
# moe-jax with its tpu extra on this machine, no TPU): a run that does not fit
# the chips' memory stops here, before anything is booked. --skip-plan skips
# it; --python=PY names the interpreter (default: the repo's .venv, else python3).
#
# Preemption: --spot (or --preemptible) books cheaper capacity that Cloud TPU
# may take back. The trainer then gets SIGTERM, saves at the next step and
# exits 75. --relaunch keeps the run going: after exit 75 or a lost slice it
# waits for the slice to be READY (or deletes and recreates a PREEMPTED one,
# reinstalling), and reruns the same train command, which resumes, printing
# each resume's step; it stops at exit 0 (TRAIN_STEPS reached), at any other
# failure, or after --max-relaunches (default 100).
#
# --dry-run prints the commands (planner included) instead of running them.
set -euo pipefail
NAME="" ZONE="" TYPE="v4-8" VERSION="tpu-ubuntu2204-base" REPO="" DRY=0 PLAN=1 PREFLIGHT=1 PY=""
CAPACITY="" RELAUNCH=0 MAX_RELAUNCHES=100 POLL_SECONDS=${MOE_JAX_POLL_SECONDS:-30}
PREEMPTED_CODE=75  # moe_jax.preemption.EXIT_CODE: stopped by a signal after saving
GCLOUD=${MOE_JAX_GCLOUD:-gcloud}  # the tests put a stand-in here
INPUTS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --type=*) TYPE="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --dry-run) DRY=1 ;;
    --skip-plan) PLAN=0 ;;
    --skip-preflight) PREFLIGHT=0 ;;
    --spot) CAPACITY=" --spot" ;;
    --preemptible) CAPACITY=" --preemptible" ;;
    --relaunch) RELAUNCH=1 ;;
    --max-relaunches=*) MAX_RELAUNCHES="${1#*=}" ;;
    --data-source=*) INPUTS+=("--gin.DATA_SOURCE=${1#*=}") ;;
    --data-dir=*) INPUTS+=("--gin.DATA_DIR=${1#*=}") ;;
    --vocabulary=*) INPUTS+=("--gin.VOCABULARY=${1#*=}") ;;
    --initial-checkpoint=*) INPUTS+=("--gin.INITIAL_CHECKPOINT_PATH=${1#*=}") ;;
    --python=*) PY="${1#*=}" ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (options before --, train flags after)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$NAME" && -n "$ZONE" && -n "$REPO" ]] || { echo "error: --name, --zone and --repo are required" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "error: give the train flags after --" >&2; exit 2; }
# The inputs go after the user's flags: on the command line, the last binding wins.
TRAIN_ARGS=$(printf ' %q' "$@" ${INPUTS[@]+"${INPUTS[@]}"})

run() { if [[ $DRY == 1 ]]; then printf '%s\n' "$*"; else eval "$@"; fi; }
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
if [[ $PLAN == 1 ]]; then
  [[ -n "$PY" ]] || { [[ -x "$REPO_DIR/.venv/bin/python" ]] && PY="$REPO_DIR/.venv/bin/python" || PY=python3; }
  if ! run "cd $(printf '%q' "$REPO_DIR") && $PY -m moe_jax.plan --topology=$TYPE$TRAIN_ARGS"; then
    echo "error: the planner refused this run on $TYPE (above); not creating the slice (--skip-plan to skip)" >&2
    exit 2
  fi
fi
SSH="$GCLOUD compute tpus tpu-vm ssh $NAME --zone=$ZONE --worker=all --command"
create_slice() {
  run "$GCLOUD compute tpus tpu-vm create $NAME --zone=$ZONE --accelerator-type=$TYPE --version=$VERSION$CAPACITY"
  run "$SSH \"git clone $REPO moe-jax && cd moe-jax && python3 -m venv .venv && .venv/bin/pip install -e . 'jax[tpu]==0.10.2' && .venv/bin/pip install --no-deps --ignore-requires-python promptsource==0.2.3\""
}
create_slice
if [[ $PREFLIGHT == 1 ]]; then
  SSH0="$GCLOUD compute tpus tpu-vm ssh $NAME --zone=$ZONE --worker=0 --command"
  WORKER_PLAN=""
  [[ $PLAN == 1 ]] && WORKER_PLAN=".venv/bin/python -m moe_jax.plan --topology=$TYPE$TRAIN_ARGS && "
  if ! run "$SSH0 \"cd moe-jax && $WORKER_PLAN.venv/bin/python -m moe_jax.preflight$TRAIN_ARGS\""; then
    echo "error: the pre-flight on worker 0 failed (above); not training. The slice $NAME is up: fix the input and rerun with the same flags, or delete it: gcloud compute tpus tpu-vm delete $NAME --zone=$ZONE" >&2
    exit 2
  fi
fi
TRAIN="$SSH \"cd moe-jax && MOE_JAX_DISTRIBUTED=1 .venv/bin/python -m moe_jax.train$TRAIN_ARGS\""
if [[ $RELAUNCH == 0 ]]; then
  run "$TRAIN"
  exit
fi

# --relaunch: the trainer exits 75 after saving when a worker gets SIGTERM
# (preemption, maintenance); a preempted slice can also vanish under it (ssh
# fails). Either way: wait for the slice to be READY again, or delete and
# recreate a PREEMPTED/TERMINATED/missing one, then run the same command,
# which resumes from the newest checkpoint, until it exits 0 (TRAIN_STEPS
# reached). Any other failure on a READY slice stops here.
STATE="$GCLOUD compute tpus tpu-vm describe $NAME --zone=$ZONE --format='value(state)'"
if [[ $DRY == 1 ]]; then
  printf '%s\n' "$TRAIN" "# --relaunch (up to $MAX_RELAUNCHES times): on exit $PREEMPTED_CODE or a lost slice, check it:" \
    "$STATE" "# READY: run the train command again (it resumes); PREEMPTED/TERMINATED/missing: recreate it:" \
    "$GCLOUD compute tpus tpu-vm delete $NAME --zone=$ZONE --quiet" "# then create and install as above, and train again"
  exit 0
fi
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
for ((attempt = 0; ; attempt++)); do
  set +e
  eval "$TRAIN" 2>&1 | tee "$LOG"
  code=${PIPESTATUS[0]}
  set -e
  [[ $code == 0 ]] && { echo "training finished (relaunches: $attempt)"; exit 0; }
  state=$(eval "$STATE" 2>/dev/null || true)
  stopped=$(grep -o "stopped by SIG[A-Z]* at step [0-9]*" "$LOG" | tail -1 || true)
  if [[ $code != "$PREEMPTED_CODE" && -z "$stopped" && $state == READY && $code != 255 ]]; then
    echo "error: training failed with exit code $code on a READY slice (not a preemption); not relaunching" >&2
    exit "$code"
  fi
  if ((attempt + 1 > MAX_RELAUNCHES)); then
    echo "error: preempted $((attempt + 1)) times; giving up after --max-relaunches=$MAX_RELAUNCHES" >&2
    exit "$PREEMPTED_CODE"
  fi
  case "$state" in
    READY) ;;
    PREEMPTED|TERMINATED|"")
      echo "slice $NAME is ${state:-gone}: recreating it"
      [[ -n "$state" ]] && eval "$GCLOUD compute tpus tpu-vm delete $NAME --zone=$ZONE --quiet"
      create_slice ;;
    *)
      echo "slice $NAME is $state: waiting for READY"
      until [[ $(eval "$STATE" 2>/dev/null || true) == READY ]]; do sleep "$POLL_SECONDS"; done ;;
  esac
  echo "relaunch $((attempt + 1)): ${stopped:+the run was $stopped; }resuming from the newest checkpoint${stopped:+ (step ${stopped##* })}"
done
