# The two commands a newcomer needs (see README):
#   make demo   - run the main job: train MoV on the T0 mixture, evaluate zero-shot
#   make test   - run the default test suite
# Both create .venv and install what is missing on first use (the demo needs only
# the runtime; tests add the PyTorch reference implementations).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.installed-runtime
TEST_STAMP := $(VENV)/.installed-test
DEMO_DIR ?= runs/demo

.PHONY: demo test test-all venv bench bench-publish bench-data device-check clean

venv: $(TEST_STAMP)

$(RUNTIME_STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	# The real P3 templates: an sdist that declares Python<3.10 but works on 3.11.
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python promptsource==0.2.3
	touch $(RUNTIME_STAMP)

# The tpu extra: the planner's tests compile for TPU slices with libtpu (no TPU needed).
$(TEST_STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install --quiet -e '.[test,tpu]'
	touch $(TEST_STAMP)

# Each `make demo` starts afresh in $(DEMO_DIR) (a run there would otherwise resume).
# DEMO_FLAGS adds gin flags (tests/test_docs.py runs the demo at tiny size with them).
DEMO_FLAGS ?=
demo: $(RUNTIME_STAMP)
	rm -rf $(DEMO_DIR)
	$(PY) -m moe_jax.train --gin_file=gin_configs/demo.gin --gin.MODEL_DIR=$(DEMO_DIR) $(DEMO_FLAGS)
	@echo "run directory: $(DEMO_DIR) (checkpoints/, train_metrics.jsonl, tensorboard/, eval/)"

# Two workers: most tests compile and run on one core. A file's tests stay on one
# worker (--dist loadfile) so its module fixtures are built once. The slowest
# tests are listed at the end.
TEST_WORKERS ?= 2
test: $(TEST_STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 -m "not slow" tests

test-all: $(TEST_STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 -m "" tests

# One core, XLA's single-threaded CPU runtime, one torch thread: steady ratios.
# glibc malloc keeps what is freed (one arena, no mmap, no trimming): by default
# XLA:CPU's temporary buffer (1.3 GB for a small-T5 step) comes from a thread
# arena, which maps it fresh every step; touching it again cost ~330k page
# faults and ~0.6 s of a 4 s step here, in proportion to memory, not compute.
# BENCH_MALLOC= (empty) measures with glibc's defaults.
BENCH_CPU ?= 0
BENCH_MALLOC ?= MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
bench: $(RUNTIME_STAMP)
	$(BENCH_MALLOC) BENCH_THREADS="1 thread pinned (taskset -c $(BENCH_CPU))" \
	XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
	taskset -c $(BENCH_CPU) $(PY) -m bench.run --out_dir=bench_results $(BENCH_ARGS)

# The last `make bench` result into the docs: docs/bench/bench.json (the record),
# the chart docs/bench/ratios.png, the tables of docs/benchmark.md and the
# README's step-cost figure (bench/publish.py).
bench-publish: $(RUNTIME_STAMP)
	$(PY) -m bench.publish --results=bench_results/bench.json

# The trainer's input pipeline for t0_train on one core (bench/data_pipeline.py):
# start-up, steady rows/s and examples/s per source, packed and unpacked, and
# the first batch after a resume at step 10 and at step 10,000. About 15 min.
bench-data: $(RUNTIME_STAMP)
	BENCH_CPU=$(BENCH_CPU) $(PY) -m bench.data_pipeline --out_dir=bench_results $(BENCH_DATA_ARGS)

# For a host with one GPU (sized for under 5 minutes at the default --size=base;
# not yet run on one): the planner's memory estimate against the device's peak,
# step times and % of the device's peak FLOP/s for IA3, MoV-10, LoRA, MoLoRA-10
# and full fine-tuning, decoding tokens/s, MoV-10's loss on the device against
# the CPU, cuDNN against XLA attention (bench/device_check.py). Where nvidia-smi
# runs, jax's CUDA plugin is installed first (the gpu extra). DEVICE_CHECK_ARGS=--size=tiny:
# the quick CPU run.
device-check: $(RUNTIME_STAMP)
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install --quiet -e '.[gpu]'; fi
	$(PY) -m bench.device_check --out_dir=device_check_results $(DEVICE_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
