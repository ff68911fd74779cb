# fmreport: the whole study as a file dependency graph. `make` (or `make help`) lists the verbs.
#
#   Fashion-MNIST IDX files ──► data/FashionMNIST/raw (verified copy)
#        ──► results/<experiment>.json   (one pattern rule, one generic engine; JSON only)
#        ──► results/figures/*.svg + report/report.html + report/report.pdf   (the report stage; never trains)
#
# Staleness is decided by fingerprints, not file times: every result records a hash of its
# resolved specs, seeds and the engine's code, and `experiments run --if-stale` does nothing
# when that still matches (a fresh clone gives every file the same age).

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
.SUFFIXES:

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP := $(VENV)/.installed
DATA := data/FashionMNIST/raw/.verified
DEBIAN_DATA := /usr/share/datasets/fashion-mnist

# QUICK=1: smoke runs (2 epochs on 2048 images) into a git-ignored folder, never over results/.
RESULTS := $(if $(QUICK),build/quick/results,results)
RUN_FLAGS := $(if $(QUICK),--quick) $(if $(DEVICE),--device $(DEVICE)) $(if $(SEEDS),--seeds $(SEEDS)) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(EXECUTOR),--executor $(EXECUTOR)) $(if $(BACKEND),--backend $(BACKEND)) \
	$(if $(THREADS),--threads $(THREADS))
# The experiment names come from the catalog (plain Python, no packages needed), and GPU_DRIVER is 1
# where a GPU driver is loaded (experiments/planning.py: from /proc and /dev, without torch).
CATALOG := $(shell $(PYTHON) -c 'import experiments.catalog as c, experiments.planning as p; \
	print(int(p.gpu_driver_loaded()), *c.EXPERIMENTS)')
GPU_DRIVER ?= $(filter 1,$(firstword $(CATALOG)))
EXPERIMENTS := $(wordlist 2,$(words $(CATALOG)),$(CATALOG))
RESULT_FILES := $(EXPERIMENTS:%=$(RESULTS)/%.json)

.PHONY: help setup data status test test-fast test-gpu-host all experiments reproduce report bench gpu-check clean lock FORCE

help: ## print this list of targets
	@echo "fmreport: make <target>   (variables: QUICK=1 smoke mode, DEVICE=cpu|cuda, SEEDS=N, EPOCHS=N, EXECUTOR=ray, BACKEND=loop|batched, THREADS=N, LANES=N, STRICT=1, RENDERER=quarto)"
	@grep -E '^[a-zA-Z%/$$()._-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | \
		sed 's/$$(RESULTS)\/%/results\/NAME/' | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'
	@echo "  experiments:           $(EXPERIMENTS)"

setup: $(SETUP) ## create .venv and install the pinned packages (pyproject.toml + requirements.lock)
$(SETUP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $@

lock: ## re-pin requirements.lock to what is installed in .venv now
	$(PY) -m pip freeze --exclude-editable | \
		{ echo "# Tested constraints for 'pip install -c requirements.lock -e .[dev]' (Python 3.11, Linux x86_64)."; \
		  echo "# Regenerate with: make lock"; cat; } > requirements.lock

data: $(DATA) ## find, verify (SHA-256) and copy Fashion-MNIST into data/ (apt-get as root if needed)
$(DATA): | $(SETUP)
	@if [ -z "$$FASHION_MNIST_DIR" ] && [ ! -d $(DEBIAN_DATA) ] && [ ! -f data/FashionMNIST/raw/train-images-idx3-ubyte ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's dataset-fashion-mnist"; \
			apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; \
		else \
			echo "Fashion-MNIST not found. Run: sudo apt-get install dataset-fashion-mnist"; \
			echo "or set FASHION_MNIST_DIR to a folder of the four IDX files (torchvision downloads them where there is internet)"; \
		fi; \
	fi
	$(PY) -m experiments data
	touch $@

status: | $(SETUP) ## each result: current, stale (and why: the catalog entry, or which engine files changed), missing
	$(PY) -m experiments status

# LANES=N (on a CUDA machine): every stale experiment in one process, N at a time, each in its own
# thread and CUDA stream (experiments/lanes.py; the batched backend). Where a GPU driver is loaded
# and LANES is not given, one process too, one experiment at a time: the data loaded and CUDA started
# once, as the GPU check's study_seconds is measured. Elsewhere one process per result file through
# the pattern rule below (make -j runs several).
ifneq ($(or $(LANES),$(GPU_DRIVER)),)
experiments: | $(SETUP) $(DATA)
	$(PY) -m experiments run $(EXPERIMENTS) --lanes $(or $(LANES),1) --if-stale --skip-unavailable $(RUN_FLAGS)
else
experiments: $(RESULT_FILES) ## run every experiment whose result is missing or stale (LANES=N: N at a time, one process)
endif

# One rule for every experiment. FORCE makes make ask the engine, which compares fingerprints
# and leaves the file untouched (so nothing downstream reruns) when it is still current.
# --skip-unavailable: an experiment that needs what this machine lacks (transfer: ImageNet weights
# and a GPU) prints a note and writes nothing; the report says so in its section.
$(RESULTS)/%.json: FORCE | $(SETUP) $(DATA) ## one experiment, e.g. `make results/depth.json`
	$(PY) -m experiments run $* --out $@ --if-stale --skip-unavailable $(RUN_FLAGS)

# QUICK=1 never writes into results/: `make results/NAME.json QUICK=1` makes the smoke result
# build/quick/results/NAME.json instead, and says so.
ifdef QUICK
results/%.json: FORCE   # a sub-make: as a prerequisite here, the smoke file would be an intermediate make deletes
	@$(MAKE) --no-print-directory build/quick/results/$*.json
	@echo "QUICK=1: smoke result in build/quick/results/$*.json (results/ holds full runs only; $@ is untouched)"
endif

reproduce: | $(SETUP) $(DATA) ## rerun the whole study from scratch (resumes if killed), then the report
	@mkdir -p build && { test -f build/reproduce.since || date -u +%Y-%m-%dT%H:%M:%S+00:00 > build/reproduce.since; }
	for name in $(EXPERIMENTS); do \
		$(PY) -m experiments run $$name --out results/$$name.json --if-stale --skip-unavailable \
			--since "$$(cat build/reproduce.since)" $(if $(EXECUTOR),--executor $(EXECUTOR)) $(if $(BACKEND),--backend $(BACKEND)) \
			$(if $(THREADS),--threads $(THREADS)) || exit $$?; \
	done
	rm -f build/reproduce.since
	$(PY) report/build.py --strict

# The report is phony too: report/build.py first redraws the figures of every result whose figure
# fingerprint changed (results/figures/NAME.fingerprint), then compares a fingerprint of all its
# inputs (results, figures, templates, prose, quoted code) with the one stored in
# report/report.html and does nothing when they match. It never trains. STRICT=1 turns a missing
# result into an error.
RENDER := $(PY) report/build.py --if-stale $(if $(QUICK),--results build/quick/results --out build/quick/report) \
	$(if $(STRICT),--strict) $(if $(RENDERER),--renderer $(RENDERER))

report: | $(SETUP) ## render report/report.html + report.pdf from results/ (never trains; STRICT=1, RENDERER=quarto)
	$(RENDER)

all: experiments ## everything: stale experiments, then the report (strict)
	$(RENDER) --strict

# The report tests open the HTML in headless Chromium and read the PDF with poppler.
TEST_TOOLS := /usr/bin/chromium /usr/bin/pdftotext
$(TEST_TOOLS):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q chromium poppler-utils || { apt-get update -q && apt-get install -y -q chromium poppler-utils; }; \
	else echo "warning: $@ is missing (sudo apt-get install chromium poppler-utils); its tests will skip"; fi

bench: | $(SETUP) $(DATA) ## measure speed -> results/bench.json, or results/bench-cuda.json where CUDA is
	$(PY) -m experiments.bench

# A GPU host may have its own torch and no package registry: this target uses .venv where it
# exists and the machine's python3 otherwise, and finds the data through FASHION_MNIST_DIR too.
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check: ## on a CUDA machine (< 8 min): the probe, the CUDA-graph tests, the study into build/gpu-check, compared with results/, rerun, bench
	$(GPU_PY) -m experiments.gpu_probe --out build/gpu-check/gpu-probe.json
	@# the probe's choices only where the CUDA-graph tests pass on this card, and LANES lanes (default 4) only
	@# where the lanes tests pass too; else the defaults, one experiment at a time, and exit 1 at the end
	@if $(GPU_PY) -m pytest -q -p no:cacheprovider tests/test_population.py -k cuda_graphs; then \
		probe="--probe build/gpu-check/gpu-probe.json"; tests=0; \
	else echo "CUDA-graph tests failed: the check runs with the engine's defaults and one lane, not the probe's choices"; \
		probe=""; tests=1; fi; \
	if [ $$tests = 0 ] && $(GPU_PY) -m pytest -q -p no:cacheprovider tests/test_population.py -k lanes_cuda; then \
		probe="$$probe --lanes $(or $(LANES),4)"; \
	elif [ $$tests = 0 ]; then echo "lanes tests failed: the check's study runs one experiment at a time"; tests=1; fi; \
	$(GPU_PY) -m pytest -q -p no:cacheprovider tests/test_population.py -k on_cuda || \
		echo "CUDA exactness tests failed (a replayed update is not the serial optimizer's, bit for bit): reported, not a gate"; \
	$(GPU_PY) -m experiments.gpu_check --out build/gpu-check $$probe && exit $$tests

test: | $(SETUP) $(DATA) $(TEST_TOOLS) ## the test suite (unit, real-data smoke, CLI, report in a browser)
	$(PY) -m pytest -q

test-fast: | $(SETUP) $(DATA) $(TEST_TOOLS) ## the tests not marked slow (no training runs of whole experiments)
	$(PY) -m pytest -q -m "not slow"

# The GPU machine's own torch pair (its Python is 3.12 and it has no package registry): the fast
# tests with that pair here, on the CPU and this machine's python3, so a torch API that differs
# between the two versions shows before a card's few minutes are spent on it.
GPU_HOST_VENV := .venv-gpu-host
GPU_HOST_TORCH := torch==2.11.0 torchvision==0.26.0
GPU_HOST_SETUP := $(GPU_HOST_VENV)/.installed
$(GPU_HOST_SETUP): pyproject.toml requirements.lock
	test -x $(GPU_HOST_VENV)/bin/python || $(PYTHON) -m venv $(GPU_HOST_VENV)
	@# pyproject's packages, dev's too, at requirements.lock's pins, but for torch's own (the tests
	@# import the project from this folder, as python -m does)
	packages=$$($(PYTHON) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		print(*[r for r in p["dependencies"] + p["optional-dependencies"]["dev"] if not r.startswith("torch")])') && \
	$(GPU_HOST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-c <(grep -v -i -E '^(torch|torchvision|triton|nvidia|cuda)' requirements.lock) $(GPU_HOST_TORCH) $$packages
	touch $@

test-gpu-host: | $(GPU_HOST_SETUP) $(DATA) $(TEST_TOOLS) ## test-fast with the GPU machine's torch 2.11 / torchvision 0.26 (.venv-gpu-host)
	$(GPU_HOST_VENV)/bin/python -c 'import torch, torchvision, sys; print("torch", torch.__version__, \
		"torchvision", torchvision.__version__, "Python", sys.version.split()[0])'
	$(GPU_HOST_VENV)/bin/python -m pytest -q -m "not slow"

clean: ## delete caches and quick results (never results/ or the published report)
	rm -rf build .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)*' -prune -exec rm -rf {} +

FORCE:
