#!/usr/bin/env bash
# The main job: install what is missing, build, and start sparkgate on https://127.0.0.1:8998
# with Spark local[*]. First start generates development TLS certificates (data/tls/) and a
# JWT key pair (data/jwt/); a development token for the current user is written to
# data/dev-token (mode 0600, never printed) and a ready-to-paste curl line is shown.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --locked --release
bin=./target/release/sparkgate
# The shipped policy (policies/acl.toml) lets the group sparkgate-users create sessions.
"$bin" token --config conf/sparkgate.toml --user "$(id -un)" --groups sparkgate-users --ttl 8h --out data/dev-token
cat <<MSG

sparkgate is starting on https://127.0.0.1:8998 — once it is up, try:

  curl --cacert data/tls/dev-ca.pem -H "Authorization: Bearer \$(cat data/dev-token)" https://127.0.0.1:8998/sessions

(new token: ./target/release/sparkgate token --user NAME --groups sparkgate-users --ttl 1h)
MSG
exec "$bin" serve --config conf/sparkgate.toml "$@"
