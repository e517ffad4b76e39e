#!/usr/bin/env bash
# Builds the release binary and prints the session benchmark's figures.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --locked --release
exec .venv/bin/python bench/sessions.py "$@"
