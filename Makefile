# make demo: set up .venv and train + test on the built-in synthetic data (about two minutes on 2 cores)
# make test: set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'setuptools<81' wheel
	$(PY) -m pip install --quiet --no-build-isolation -r requirements.txt -r requirements-dev.txt
	touch $@

demo: setup
	$(PY) main.py train --flag demo --device cpu --vis_env None --overwrite True
	$(PY) main.py test --flag demo --device cpu

test: setup
	$(PY) -m pytest -q
