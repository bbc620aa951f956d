# segsweep. Every target creates .venv from the requirements when it is missing or older than them.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 5000
ARGS   ?=
MODULES ?=
WORKERS ?= 2
DATASET ?= covid_infection
ROOT   ?=
SWEEP  := experiment=covid_arch_x_loss

.DEFAULT_GOAL := help
.PHONY: help install run sweep test test-all mutate ui summary bench bench-gpu report check-data predict clean
.PHONY: cluster-up cluster-down test-cluster

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'
	@echo "  extra Hydra overrides: make run ARGS='dataset=acdc model=resunet'"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(STAMP)  ## create .venv, install the pinned requirements, then segsweep itself (pip install -e .)

run: $(STAMP)  ## one run on the embedded phantom data (ARGS= for overrides)
	$(PY) run.py $(ARGS)

sweep: $(STAMP)  ## the 3 x 3 model x loss sweep on the default (phantom) data
	$(PY) run.py -m $(SWEEP) $(ARGS)

test: $(STAMP)  ## the fast test suite on WORKERS=2 pytest-xdist workers (under 5 minutes on 2 cores)
	$(PY) -m pytest -m "not slow" -q -n $(WORKERS)

test-all: $(STAMP)  ## every test, the slow end-to-end ones included
	$(PY) -m pytest -q

mutate: $(STAMP)  ## issue 20's hand-made changes, then mutation testing (mutmut) of metrics, losses, checkpoints, loop, transforms, splits, sweep, report stats -> outputs/mutate/{hand,report}.md (MODULES='metrics losses' for some; long: not part of make test)
	nice -n 10 $(PY) tools/hand_mutations.py
	nice -n 10 $(PY) tools/mutate.py $(MODULES)

ui: $(STAMP)  ## MLflow UI on 127.0.0.1 (PORT=5000 by default)
	$(VENV)/bin/mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlruns/mlflow.db" --host 127.0.0.1 --port $(PORT)

summary: $(STAMP)  ## layers, parameters and FLOPs of a model (ARGS='model=transunet profile=paper')
	$(PY) -m seg.models.summary $(ARGS)

bench: $(STAMP)  ## speed vs the matmul ceiling and the peers -> outputs/bench/bench.{json,md}, benchmarks/RESULTS.md, README table (ARGS='--threads 1' on a loaded machine)
	$(PY) -m benchmarks.run $(ARGS)

bench-gpu: $(STAMP)  ## on a CUDA machine: fp32 / fp16 / bf16 AMP, channels_last, torch.compile, fp16 training, predict -> outputs/bench/gpu.{json,md} + a RESULTS.md section
	$(PY) -m benchmarks.gpu $(ARGS)

report: $(STAMP)  ## architecture x loss report from MLflow into outputs/report/ (ARGS='--experiment phantom_xray')
	$(PY) -m seg.report $(ARGS)

register: $(STAMP)  ## register a task's validation-selected configuration in the Model Registry: make register EXPERIMENT=phantom_xray
	$(PY) -m seg.tracking register --experiment $(or $(EXPERIMENT),phantom_xray) $(ARGS)

check-data: $(STAMP)  ## validate a dataset tree: make check-data DATASET=acdc ROOT=/path/to/ACDC
	$(PY) -m seg.data.check $(DATASET) "$(ROOT)" $(ARGS)

predict: $(STAMP)  ## segment images with a run or checkpoint: make predict ARGS='MODEL INPUT... --out DIR'
	$(PY) -m seg.predict $(ARGS)

cluster-up: $(STAMP)  ## local SLURM + PostgreSQL-backed MLflow server on 127.0.0.1 (root; README: Scaling out)
	scripts/cluster/cluster.sh up

cluster-down:  ## stop the local cluster (data kept; scripts/cluster/cluster.sh purge deletes them)
	scripts/cluster/cluster.sh down

test-cluster: $(STAMP)  ## the 3 x 3 study through the local SLURM cluster, one job requeued (brings it up and down)
	$(PY) -m pytest tests/test_cluster.py -q -rs

clean:  ## remove outputs/, mlruns/ and caches (keeps .venv)
	rm -rf outputs mlruns multirun .pytest_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
