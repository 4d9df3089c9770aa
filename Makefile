# LatentBridge: make install, make train, make test (see README.md)
PY ?= .venv/bin/python
PIP ?= .venv/bin/pip
export HF_HUB_OFFLINE ?= 1

.PHONY: install system-deps train prepare reproduce-mini reproduce-mini-full reproduce-mini-p2 test test-slow test-gpu test-all lint format clean

system-deps:  ## Debian packages: the mini dataset (needs root; skipped when already installed)
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; fi

install: system-deps  ## venv + pinned dependencies (offline on the dev machine) + the project, editable
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e ".[train,eval,mllm,slurm,serve,dev]"

train:  ## the main job: d1 on the offline mini setup (the mini teacher and codec: shipped in assets/mini)
	$(PY) train.py $(ARGS)

prepare:  ## rebuild the shipped mini teacher and codec (assets/mini) from their recipes and check them (~35 min)
	$(PY) scripts/prepare_mini.py $(ARGS)

# the mini plans: two jobs at a time, each with half the cores (two one-thread jobs on 2 cores: 1.43x one at a time)
PLAN_JOBS := launcher=submitit_local launcher.max_parallel=2 launcher.threads_per_job=$(shell echo $$(( ($$(nproc) + 1) / 2 )))

reproduce-mini:  ## paper 1's six findings on the mini setup (Fig. 3, 4, 6(a, b)): 24 runs to convergence, evaluation, plots, findings; 59 min measured on 2 cores
	$(PY) reproduce.py plan=mini $(PLAN_JOBS) $(ARGS)

reproduce-mini-full:  ## reproduce-mini + the rows beyond its findings (Fig. 6(c), Fig. 8, token distillation, one neck for every rate); 37 min more
	$(PY) reproduce.py plan=mini_full $(PLAN_JOBS) $(ARGS)

reproduce-mini-p2:  ## paper 2 on the mini setup: one variable-rate model vs its ablations and 4 fixed-rate models; 40 min measured on 2 cores
	$(PY) reproduce.py plan=mini_p2 $(PLAN_JOBS) $(ARGS)

test:  ## fast tests (< 10 min on 2 cores)
	$(PY) -m pytest -q $(ARGS)

test-slow:  ## the slow tests: DDP with 2 processes, end-to-end preparation, paper presets at their real size
	$(PY) -m pytest -q -m slow $(ARGS)

test-gpu:  ## GPU smoke tests (AMP per scenario, evaluation on cuda); skipped without a GPU
	$(PY) -m pytest -q -m gpu $(ARGS)

test-all: test test-slow

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf logs .pytest_cache .ruff_cache
