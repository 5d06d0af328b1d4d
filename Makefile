# The two commands a newcomer needs (see README):
#   make demo   - run the main job
#   make test   - run the default test suite
# Both create .venv and install what is missing on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all venv clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# The real P3 templates: an sdist that declares Python<3.10 but works on 3.11.
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python promptsource==0.2.3
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m moe_jax.demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache
