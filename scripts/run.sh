#!/usr/bin/env bash
# The main job: install what is missing, build, and start sparkgate on https://127.0.0.1:8998
# with Spark local[*]. Development certificates are generated into data/tls/ on first start.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --locked --release
# Until token authentication lands (issue 3) the only authenticator is the loud, loopback-only
# anonymous development mode; it is switched on here, never by the default configuration.
exec ./target/release/sparkgate serve --config conf/sparkgate.toml \
  --set auth.dangerous_allow_anonymous=true "$@"
