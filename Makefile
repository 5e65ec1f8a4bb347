# Two commands matter: `make pipeline` and `make test`. Everything else is a helper.
SHELL   := /bin/bash
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
DEPS    := "prefect==3.8.8" "fastapi<0.151" "sqlalchemy[asyncio]<2.1" hydra-core \
           accelerate datasets "datatrove[processing,io]" spacy sentencepiece wandb \
           transformers peft tokenizers safetensors matplotlib pytest pytest-timeout \
           trl  # test/benchmark peer: DPO parity (tests/test_dpo_parity.py) and benchmarks/dpo_step.py
DEPS    += ray  # data.executor=ray (80 MB wheel, ~13 s; tests/test_scale_out.py runs it on a local cluster)
STAMP   := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY=false
export PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120
export DO_NOT_TRACK=1
export WANDB_MODE=offline
export WANDB_ERROR_REPORTING=false
export WANDB_SILENT=true
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export PREFECT_HOME ?= $(CURDIR)/.prefect

# `make pipeline` talks to a local Prefect server (its UI shows every run), started
# on first use and left running; `make server-stop` stops it.
PREFECT_PORT ?= 4200
PREFECT_API  := http://127.0.0.1:$(PREFECT_PORT)/api
SERVER_PID   := $(PREFECT_HOME)/server-$(PREFECT_PORT).pid

.PHONY: setup server server-stop pipeline test check sweep bench clean distclean

setup: $(STAMP)

# torch first and alone, from the CPU wheel; every later install repeats the pin.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q $(TORCH) $(DEPS)
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

server: setup
	@if ! curl -sf $(PREFECT_API)/health > /dev/null; then \
	  echo "starting the Prefect server (UI: http://127.0.0.1:$(PREFECT_PORT)), log in .prefect/server.log"; \
	  mkdir -p $(PREFECT_HOME); \
	  nohup $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) > $(PREFECT_HOME)/server.log 2>&1 & \
	  echo $$! > $(SERVER_PID); \
	  for i in $$(seq 120); do curl -sf $(PREFECT_API)/health > /dev/null && break; sleep 1; done; \
	  curl -sf $(PREFECT_API)/health > /dev/null || { echo "Prefect server did not start: see $(PREFECT_HOME)/server.log"; exit 1; }; \
	fi

# Stops only the server `make server` started (its pid file), never another process by name.
server-stop:
	@if [ -f $(SERVER_PID) ] && kill -0 $$(cat $(SERVER_PID)) 2>/dev/null; then \
	  kill $$(cat $(SERVER_PID)) && echo "stopped the Prefect server (pid $$(cat $(SERVER_PID)))"; \
	else echo "no Prefect server started by make server is running"; fi
	@rm -f $(SERVER_PID)

pipeline: server
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/python -m flows.pipeline $(ARGS)

# Validate the config and print each stage's key and whether it is cached; runs nothing.
check: setup
	$(BIN)/python -m flows.pipeline run.dry_run=true $(ARGS)

sweep: server
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/python -m flows.pipeline -m align.beta=0.05,0.1,0.5 $(ARGS)

test: setup
	$(BIN)/python -m pytest -q tests $(ARGS)

# Speed against a baseline measured in the same run (benchmarks/README.md); ~15 min on 2 cores, not part of
# `make test`. Each script prints `ratio <name>=<x.xx>` (higher = ours faster); the list is repeated at the end.
BENCH_LOG := outputs/bench.log
bench: setup
	@mkdir -p outputs && : > $(BENCH_LOG)
	$(BIN)/python -m benchmarks.pretrain_throughput 2>&1 | tee -a $(BENCH_LOG); test $${PIPESTATUS[0]} -eq 0
	$(BIN)/python -m benchmarks.dpo_step 2>&1 | tee -a $(BENCH_LOG); test $${PIPESTATUS[0]} -eq 0
	$(BIN)/python benchmarks/data_throughput.py 2>&1 | tee -a $(BENCH_LOG); test $${PIPESTATUS[0]} -eq 0
	@echo "== headline ratios (higher = ours faster; $(BENCH_LOG))"; grep '^ratio ' $(BENCH_LOG)

clean:
	rm -rf outputs multirun wandb .pytest_cache

distclean: clean
	rm -rf artifacts $(VENV)
