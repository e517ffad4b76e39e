#!/usr/bin/env bash
# The whole gate: install what is missing, then format check, clippy with warnings as errors,
# and every test (unit tests and the integration suite with real Spark). .ci/run calls this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The KDC tools (krb5kdc, kdb5_util, kadmin.local) live in /usr/sbin.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# The integration tests mostly wait on Spark, so more threads than cores keeps them moving;
# they share one gateway and a few Spark sessions.
cargo test --locked -- --test-threads 6
