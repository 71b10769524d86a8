# Everything installs from the project's own files into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench gpu-check report clean sweep-cifar10 sweep-cifar100 sweep-ptb sweep-horizon \
	tune-demo tune-cifar10 tune-ptb tune-horizon reproduce evidence-reports

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

# The lr-tuning protocol (python -m xgrad.tune: a grid around each preset lr per arm on a validation split, then the
# final seeds at the chosen lr; relaunch the same target to resume), then the study's report. REDUCED SCALE studies
# of results/EVIDENCE_PLAN.md; DATA="data_root=PATH" points them at CIFAR-10 / PTB. Two 1-thread jobs at a time.
TUNE_LAUNCHER ?= hydra/launcher=joblib hydra.launcher.n_jobs=2 threads=1
DATA ?=
ALL_OPTIMIZERS := optimizers=[sgdm,adam,adamw,adabelief,adam3]
CIFAR_STUDY := experiment=cpu_cifar10_resnet20 train_subset=5000 val_size=1000 epochs=6
PTB_STUDY := experiment=cpu_ptb_zaremba_small train_subset=100000 epochs=4
tune-demo: $(STAMP)
	$(PY) -m xgrad.tune study=demo experiment=cpu_demo val_size=500 optimizers=[sgdm,adamw] $(TUNE_LAUNCHER)
	$(PY) -m xgrad.report outputs/tune/demo --out outputs/tune/demo_report
tune-cifar10: $(STAMP)
	$(PY) -m xgrad.tune study=cifar10 $(CIFAR_STUDY) $(ALL_OPTIMIZERS) $(TUNE_LAUNCHER) $(DATA)
	$(PY) -m xgrad.report outputs/tune/cifar10 --out outputs/tune/cifar10_report
tune-ptb: $(STAMP)
	$(PY) -m xgrad.tune study=ptb $(PTB_STUDY) $(ALL_OPTIMIZERS) $(TUNE_LAUNCHER) $(DATA)
	$(PY) -m xgrad.report outputs/tune/ptb --out outputs/tune/ptb_report
# The horizon joins the CIFAR-10 study (its s=0 and s=1 arms are shared): SGDM and AdamW at s = 0.5, 2, 4.
tune-horizon: $(STAMP)
	$(PY) -m xgrad.tune study=cifar10 $(CIFAR_STUDY) optimizers=[sgdm,adamw] steps=[0.5,2,4] $(TUNE_LAUNCHER) $(DATA)
	$(PY) -m xgrad.report outputs/tune/cifar10 --out outputs/tune/cifar10_report

# Figures and tables from finished runs: make report [RESULTS=outputs/] [REPORT=outputs/report/]
RESULTS ?= outputs/
REPORT ?= outputs/report/
report: $(STAMP)
	$(PY) -m xgrad.report $(RESULTS) --out $(REPORT) --reference

# Rebuild the committed evidence reports from the committed run records (results/runs/<study>: records only).
evidence-reports: $(STAMP)
	for study in results/runs/*/; do study=$${study%/}; name=$$(basename $$study); \
		$(PY) -m xgrad.report $$study --out results/cpu_evidence_$$name || exit 1; done

# Re-run one run of a committed report for one epoch and compare: make reproduce REPORT=results/<report> [ARGS=...]
reproduce: $(STAMP)
	$(PY) scripts/reproduce.py $(REPORT) $(ARGS)

bench: $(STAMP)
	$(PY) scripts/bench_predict.py

# The first command on a machine with a GPU (under 5 minutes on one): writes results/gpu_check.md; exit 2 without a GPU.
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py

clean:
	rm -rf $(VENV) outputs build *.egg-info
