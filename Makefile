# Each target sets itself up on a fresh machine: a virtual environment in .venv, the package
# installed editable with its test extras (`make test`) or its demo extras (`make demo`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

# Options for the demo, e.g. make demo DEMO_ARGS="--steps 200 --backend interpret"
DEMO_ARGS ?=

.PHONY: test install demo clean

$(VENV)/.installed: setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test]"
	touch $@

install: $(VENV)/.installed

$(VENV)/.installed-demo: setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[demo]"
	touch $@

# Trains a small language model with fastgd's loss and AdamW, then the same run with PyTorch's,
# and plots both (about two minutes on a 2-core CPU).
demo: $(VENV)/.installed-demo
	$(PY) -m fastgd.demo --compare $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
