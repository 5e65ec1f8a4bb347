#!/bin/sh
# The compose worker: makes sure the process work pool exists, registers every deployment in
# conf/deploy/ (flows/deploy.py), then polls the pool and runs each flow run as a subprocess here.
set -eu
POOL="${LLM_PIPELINE_POOL:-llm-pipeline-pool}"
# one flow run at a time by default: a training stage already uses every core it is given
LIMIT="${WORKER_LIMIT:-1}"

prefect work-pool inspect "$POOL" > /dev/null 2>&1 || prefect work-pool create "$POOL" --type process
if [ -f flows/deploy.py ]; then
  python -m flows.deploy register
else
  echo "flows/deploy.py is not in this image: no deployments registered" >&2
fi
# --with-healthcheck serves /health on PREFECT_WORKER_WEBSERVER_PORT (8080) for compose's healthcheck
exec prefect worker start --pool "$POOL" --type process --limit "$LIMIT" --with-healthcheck
