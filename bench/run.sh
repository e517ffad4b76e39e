#!/usr/bin/env bash
# Builds the release binary and prints benchmark figures:
#   bench/run.sh            sessions (cold start, 1+1 round trip)
#   bench/run.sh batches    batches (submit -> running / success, local and standalone)
#   bench/run.sh memory     the gateway's memory while clients list a large statement history
#   bench/run.sh store      what the durable store costs a statement (sqlite vs memory)
#   bench/run.sh recovery   20 rounds of SIGKILL -> restart with a running statement
#   bench/run.sh restart    start-up with 10,000 finished and 100 live records
#   bench/run.sh throughput authenticated requests/s against a bare axum + rustls floor
#   bench/run.sh crowd      120 simultaneous session creates from three users
#   bench/run.sh warm       session ready with a warm driver vs a cold start
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --locked --release
cargo build --locked --release --example bench_floor --example bench_load
case "${1:-sessions}" in
  batches) exec .venv/bin/python bench/batches.py ;;
  memory) exec .venv/bin/python bench/memory.py ;;
  store) exec .venv/bin/python bench/store.py ;;
  recovery) exec .venv/bin/python bench/recovery.py ;;
  restart) exec .venv/bin/python bench/recovery.py restart ;;
  throughput) exec .venv/bin/python bench/throughput.py ;;
  crowd) exec .venv/bin/python bench/crowd.py ;;
  warm) exec .venv/bin/python bench/warm.py ;;
  *) exec .venv/bin/python bench/sessions.py ;;
esac
