# make demo: set up .venv and train + test on the built-in synthetic data (about two minutes on 2 cores)
# make test: set up .venv and run the test suite
# make visdom-assets: visdom's page scripts, styles and fonts from npm (see utils/visdom_assets.py)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup visdom-assets
setup: $(VENV)/.installed
	@if command -v npm >/dev/null; then $(PY) -m utils.visdom_assets; else \
	echo "npm not found: the visdom page needs its assets, from npm, once: make visdom-assets"; fi

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'setuptools<81' wheel
	$(PY) -m pip install --quiet --no-build-isolation -r requirements.txt -r requirements-dev.txt
	touch $@

# only the missing or wrong files are fetched: a no-op when all are in place
visdom-assets: $(VENV)/.installed
	$(PY) -m utils.visdom_assets

demo: setup
	$(PY) main.py train --flag demo --device cpu --vis_env None --overwrite True
	$(PY) main.py test --flag demo --device cpu

test: setup
	$(PY) -m pytest -q
