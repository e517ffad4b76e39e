#!/usr/bin/env bash
# Installs everything sparkgate needs on a fresh Debian machine (run as root), idempotently:
# Debian packages (Java 17, Kerberos tools and headers, build tools, bubblewrap for the drivers'
# sandbox, acl for scripts/run.sh; slapd, ldap-utils, chromium and chromium-driver for the
# tests), and a Python virtual environment with a pinned pyspark from PyPI. Nothing is fetched
# outside the package registries.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYSPARK_VERSION="${PYSPARK_VERSION:-4.0.1}"
VENV="${SPARKGATE_VENV:-$here/.venv}"

need_pkgs=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in pkg-config libclang-dev libkrb5-dev krb5-kdc krb5-admin-server krb5-user \
         python3-venv procps ca-certificates curl bubblewrap acl gcc \
         slapd ldap-utils chromium chromium-driver; do
  have "$p" || need_pkgs+=("$p")
done
if ! command -v java >/dev/null 2>&1 || ! java -version 2>&1 | grep -q '"17\|"2[0-9]'; then
  have openjdk-17-jre-headless || need_pkgs+=("openjdk-17-jre-headless")
fi
# The tests build small Spark job jars with javac and jar (nothing is downloaded).
if ! command -v javac >/dev/null 2>&1 || ! command -v jar >/dev/null 2>&1; then
  have openjdk-17-jdk-headless || need_pkgs+=("openjdk-17-jdk-headless")
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

py="$(command -v python3)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating the Python virtual environment at $VENV"
  "$py" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import pyspark,sys; sys.exit(0 if pyspark.__version__=='$PYSPARK_VERSION' else 1)" 2>/dev/null; then
  echo "setup: installing pyspark==$PYSPARK_VERSION into $VENV (this takes a few minutes the first time)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "pyspark==$PYSPARK_VERSION"
fi
# The drivers' %matplot magic renders with matplotlib (the web UI's test shows its image).
MATPLOTLIB_VERSION="${MATPLOTLIB_VERSION:-3.10.7}"
if ! "$VENV/bin/python" -c "import matplotlib,sys; sys.exit(0 if matplotlib.__version__=='$MATPLOTLIB_VERSION' else 1)" 2>/dev/null; then
  echo "setup: installing matplotlib==$MATPLOTLIB_VERSION into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "matplotlib==$MATPLOTLIB_VERSION"
fi
# Python jobs of Livy's programmatic API are unpickled, and their results pickled, with
# cloudpickle, as Livy's Python client pickles them (the version pyspark itself bundles).
CLOUDPICKLE_VERSION="${CLOUDPICKLE_VERSION:-3.1.1}"
if ! "$VENV/bin/python" -c "import cloudpickle,sys; sys.exit(0 if cloudpickle.__version__=='$CLOUDPICKLE_VERSION' else 1)" 2>/dev/null; then
  echo "setup: installing cloudpickle==$CLOUDPICKLE_VERSION into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "cloudpickle==$CLOUDPICKLE_VERSION"
fi
# The JVM side of Livy's job API, for sessions' drivers (spark.job_api_jar).
bash "$here/scripts/build-livy-api.sh"
echo "setup: ok (pyspark $("$VENV/bin/python" -c 'import pyspark; print(pyspark.__version__)') in $VENV)"
