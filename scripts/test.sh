#!/usr/bin/env bash
# The whole gate: install what is missing, then format check, clippy with warnings as errors,
# and every test (unit tests and the integration suite with real Spark). .ci/run calls this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Real Livy client libraries the compatibility tests drive (tests/clients/), kept apart from the
# venv the Spark drivers use.
# cloudpickle is what Livy's own Python client pickles jobs with (the version pyspark vendors).
CLIENTS_VENV=.venv-clients
PYLIVY_VERSION=0.8.0
CLOUDPICKLE_VERSION=3.1.1
if ! "$CLIENTS_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('livy') != '$PYLIVY_VERSION' or m.version('cloudpickle') != '$CLOUDPICKLE_VERSION')" 2>/dev/null; then
  echo "test: installing livy==$PYLIVY_VERSION (pylivy) and cloudpickle==$CLOUDPICKLE_VERSION into $CLIENTS_VENV"
  python3 -m venv "$CLIENTS_VENV"
  "$CLIENTS_VENV/bin/pip" install -q --disable-pip-version-check "livy==$PYLIVY_VERSION" "cloudpickle==$CLOUDPICKLE_VERSION"
fi
# The KDC tools (krb5kdc, kdb5_util, kadmin.local) live in /usr/sbin.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# The integration tests mostly wait on Spark, so more threads than cores keeps them moving;
# they share one gateway and a few Spark sessions.
cargo test --locked -- --test-threads 6
