# Everything installs from the project's own files into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench report clean sweep-cifar10 sweep-cifar100 sweep-ptb sweep-horizon

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

# The quick start: SGDM and AdamW, with and without weight prediction, on the generated demo images (CPU, no download),
# then its report (convergence figure and table). DEMO_ARGS: extra overrides, e.g. DEMO_ARGS="epochs=1".
DEMO_ARGS ?=
DEMO_DIR ?= outputs/sweeps/demo
DEMO_REPORT ?= outputs/demo_report
demo: $(STAMP)
	$(PY) -m xgrad.run -m sweep=demo hydra.sweep.dir=$(DEMO_DIR) $(DEMO_ARGS)
	$(PY) -m xgrad.report $(DEMO_DIR) --out $(DEMO_REPORT)
	@echo "demo report: $(DEMO_REPORT)/README.md"
	@echo "  figure: $$(ls $(DEMO_REPORT)/convergence_*.png)"
	@echo "  table:  $$(ls $(DEMO_REPORT)/table_*.md)"

# The paper's grids (long: add LAUNCHER="hydra/launcher=slurm" or "hydra/launcher=gpus_local" to run them in parallel).
LAUNCHER ?=
sweep-cifar10: $(STAMP)
	$(PY) -m xgrad.run -m sweep=cifar10_paper $(LAUNCHER)
sweep-cifar100: $(STAMP)
	$(PY) -m xgrad.run -m sweep=cifar100_paper $(LAUNCHER)
sweep-ptb: $(STAMP)
	$(PY) -m xgrad.run -m sweep=ptb_paper $(LAUNCHER)
sweep-horizon: $(STAMP)
	$(PY) -m xgrad.run -m sweep=horizon $(LAUNCHER)

# Figures and tables from finished runs: make report [RESULTS=outputs/] [REPORT=outputs/report/]
RESULTS ?= outputs/
REPORT ?= outputs/report/
report: $(STAMP)
	$(PY) -m xgrad.report $(RESULTS) --out $(REPORT) --reference

bench: $(STAMP)
	$(PY) scripts/bench_predict.py

clean:
	rm -rf $(VENV) outputs build *.egg-info
