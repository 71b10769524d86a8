# Everything installs from the project's own files into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check xgrad tests scripts

# The quick start: SGDM and AdamW, with and without weight prediction, on the generated demo images (CPU, no download).
demo: $(STAMP)
	$(PY) -m xgrad.run -m experiment=cpu_demo optimizer=sgdm,adamw predict=false,true hydra.sweep.dir=outputs/sweeps/demo
	@echo "results: outputs/sweeps/demo (one folder per run: metrics.csv, summary.json)"

bench: $(STAMP)
	$(PY) scripts/bench_predict.py

clean:
	rm -rf $(VENV) outputs build *.egg-info
