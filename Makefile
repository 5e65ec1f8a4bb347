# Two commands matter: `make pipeline` and `make test`. Everything else is a helper.
SHELL   := /bin/bash
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
DEPS    := "prefect==3.8.8" "fastapi<0.151" "sqlalchemy[asyncio]<2.1" hydra-core \
           accelerate datasets "datatrove[processing,io]" spacy sentencepiece wandb \
           transformers peft tokenizers safetensors matplotlib pytest pytest-timeout \
           trl  # test/benchmark peer: DPO and GRPO parity (tests/test_dpo_parity.py, tests/test_grpo.py) and benchmarks/dpo_step.py
DEPS    += dockerfile  # test: docker/Dockerfile read by Docker's own parser (tests/test_docker.py)
DEPS    += hydra-joblib-launcher hydra-optuna-sweeper  # sweeps: hydra/launcher=parallel|joblib, hydra/sweeper=optuna
DEPS    += ray  # data.executor=ray (80 MB wheel, ~13 s; tests/test_scale_out.py runs it on a local cluster)
DEPS    += phonenumbers  # data.pii: phone numbers by libphonenumber's metadata (components/data/pii.py)
DEPS    += py3langid alt-profanity-check  # data.language / data.toxicity: their models ship inside the wheels (offline)
DEPS    += markdown-it-py  # eval: report.md rendered to the self-contained report.html (components/eval/html.py)
DEPS    += lm-eval==0.4.13  # eval.benchmarks: lm-evaluation-harness scores them (components/eval/benchmarks.py); ~30 s of setup
DEPS    += pytest-xdist  # `make test` runs the test files on TEST_WORKERS processes (most tests wait on subprocesses)
TEST_WORKERS ?= 2
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

.PHONY: setup server server-stop serve serve-stop pipeline test check sweep bench clean distclean
.PHONY: plan cache chat

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
	$(BIN)/python -m flows.deploy server --port $(PREFECT_PORT)

# Stops only what `make server`/`make serve` started (pid files, each checked to be our process), never by name.
server-stop:
	$(BIN)/python -m flows.deploy stop --port $(PREFECT_PORT)

# The server (unless PREFECT_API_URL names one), a process work pool, a worker and every conf/deploy/*.yaml
# deployment; then `prefect deployment run llm-pipeline/smoke --watch` (with PREFECT_API_URL set) runs one.
serve: setup
	$(BIN)/python -m flows.deploy serve --port $(PREFECT_PORT)

serve-stop: server-stop

pipeline: server
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/python -m flows.pipeline $(ARGS)

# Validate the config, print each stage's key and whether it is cached, and why each stage builds
# (config keys old -> new against the nearest artifact, a changed input, code files, versions); runs nothing.
plan: setup
	$(BIN)/python -m flows.pipeline run.dry_run=true $(ARGS)

check: plan  # the old name of `make plan`

# The artifact cache: ARGS='ls' (--json: everything), ARGS='verify' (every file against its manifest),
# ARGS='gc -- experiment=smoke' (what no config reaches: a dry run; add --yes to delete).
cache: setup
	$(BIN)/python -m flows.cache $(ARGS)

# Talk to a trained model through its chat template (streamed): ARGS='sft experiment=smoke' (a stage's artifact
# for that config; default align), ARGS='path/to/model', flags --temperature --top-k --top-p --num-beams
# --repetition-penalty --max-new-tokens --system --prompt "..." (one answer, no loop); /reset, /quit.
chat: setup
	$(BIN)/python -m flows.chat $(ARGS)

# Three align.beta values at once (hydra/launcher=parallel: joblib, 3 processes) on one artifact cache: the stages
# before align are built once. The summary (summary.md, summary.png) lands in the sweep folder and in the UI.
sweep: server
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/python -m flows.pipeline -m hydra/launcher=parallel align.beta=0.05,0.1,0.5 $(ARGS)

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests $(ARGS)

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
