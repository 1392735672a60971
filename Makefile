# amm: `make demo`, `make test`, `make figure3 SCALE=reduced` (see README.md).
# The first target that needs Python creates .venv and installs the project once (stamp file).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.amm-installed
SCALE  ?= smoke
TORCH  := torch==2.14.1 torchvision==0.29.1

# Next to the shared data folder (offline machines), read the LIBSVM files from there.
ifneq ($(wildcard ../shared/data/libsvm),)
export AMM_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: help venv demo test test-fast lint bench bench-optim bench-train bench-profile sweep claims power clean
.DEFAULT_GOAL := help

help:
	@echo "make demo                 Figure 3 on breast_cancer (500 iterations, no download)"
	@echo "make test                 the test suite (what CI runs)"
	@echo "make test-fast            the tests not marked slow: the inner loop, under 2 minutes"
	@echo "make lint                 ruff check + ruff format --check + mypy"
	@echo "make figure3 SCALE=...    reproduce an artifact (smoke | reduced | paper)"
	@echo "make sweep EXP=figure4 SCALE=paper CLUSTER=slurm   the same, the jobs on SLURM"
	@echo "make claims SCALE=...     the claims report from the artifacts' runs: results/claims/<scale>/CLAIMS.md"
	@echo "make power SCALE=...      seeds each seeded claim needs for 80 % power: results/power/<scale>/"
	@echo "make formulation          how much AM-AdamW's formulation choices matter (any artifact by name)"
	@echo "make bench                optimizer-step table + Table 2 end to end (bench-optim, bench-train)"
	@echo "make bench-profile        where the compiled CPU step's time goes (results/bench_optim/profile_cpu.md)"
	@echo "make clean                remove runs/ and caches (keeps results/ and .venv)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e '.[suite,vision,llm,cluster,dev]'
	touch $@

demo: $(STAMP)
	$(PY) -m experiments.reproduce figure3 --scale smoke --out-dir outputs/demo/figure3 trainer.max_steps=500

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy  # files and settings: [tool.mypy] in pyproject.toml (amm/, experiments/)

# Benchmarks, not tests: results/bench_optim/ and results/bench_train/ (per device type).
bench: bench-optim bench-train

bench-optim: $(STAMP)
	$(PY) scripts/bench_optim.py $(ARGS)

bench-train: $(STAMP)
	$(PY) scripts/bench_train.py $(ARGS)

bench-profile: $(STAMP)
	$(PY) scripts/profile_step.py $(ARGS)

# Artifacts: `make figure1`, `make table2`, `make formulation`, ...: one per
# configs/experiment/<name>.yaml (with experiments/<name>.py), run at $(SCALE), writing
# results/<name>/$(SCALE)/. ARGS: more overrides. A new artifact needs no line here.
ARTIFACTS := $(basename $(notdir $(wildcard configs/experiment/*.yaml)))
.PHONY: $(ARTIFACTS)
$(ARTIFACTS): $(STAMP)
	$(PY) -m experiments.reproduce $@ --scale $(SCALE) $(ARGS)

# The claims report (README "Claims"): results/claims/$(SCALE)/CLAIMS.md, computed from the runs
# that the artifacts' provenance.json files list (make the artifacts first; it trains nothing).
claims: $(STAMP)
	$(PY) -m experiments.claims --scale $(SCALE) $(ARGS)

# Seeds for 80 % power per seeded claim, from the runs the artifacts were drawn from:
# results/power/$(SCALE)/power.md (the experiment configs' `seeds:` cite it).
power: $(STAMP)
	$(PY) -m experiments.power --scale $(SCALE) $(ARGS)

# An artifact's sweep on a cluster (README "Running on a cluster"): each sweep block as one SLURM
# job array through configs/hydra/launcher/$(CLUSTER).yaml, then the artifact once all finished.
# ARGS: more Hydra overrides, e.g. ARGS="hydra.launcher.partition=gpu hydra.launcher.account=me".
CLUSTER ?= slurm
ifneq ($(filter sweep,$(MAKECMDGOALS)),)
ifndef EXP
$(error usage: make sweep EXP=<artifact> [SCALE=smoke|reduced|paper] [CLUSTER=slurm] [ARGS=...])
endif
endif
sweep: $(STAMP)
	$(PY) -m experiments.reproduce $(EXP) --scale $(SCALE) hydra/launcher=$(CLUSTER) $(ARGS)

clean:
	rm -rf runs outputs multirun .pytest_cache .ruff_cache .mypy_cache
