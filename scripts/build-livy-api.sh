#!/usr/bin/env bash
# Builds java/build/sparkgate-livy-api.jar: the Livy-compatible job API (org.apache.livy.Job,
# org.apache.livy.JobContext) and the runner the drivers call for JVM jobs, compiled with javac
# against the Spark jars of the drivers' pyspark. Skipped when the jar is newer than every
# source. Point `spark.job_api_jar` at the jar to run JVM jobs (see conf/sparkgate.toml).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPARKGATE_VENV:-$here/.venv}"
src="$here/java/livy-api/src"
out="$here/java/build"
jar_path="$out/sparkgate-livy-api.jar"
sources=()
while IFS= read -r -d '' f; do sources+=("$f"); done < <(find "$src" -name '*.java' -print0)
fresh=1
if [ ! -f "$jar_path" ]; then fresh=0; fi
for f in "${sources[@]}"; do
  if [ "$fresh" = 1 ] && [ "$f" -nt "$jar_path" ]; then fresh=0; fi
done
if [ "$fresh" = 1 ]; then
  exit 0
fi
spark_jars="$("$VENV/bin/python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
classes="$(mktemp -d)"
trap 'rm -rf "$classes"' EXIT
echo "setup: compiling the Livy-compatible job API into $jar_path"
# javac expands the classpath wildcard itself.
javac --release 17 -nowarn -XDsuppressNotes -cp "$spark_jars/*" -d "$classes" "${sources[@]}"
mkdir -p "$out"
jar cf "$jar_path.tmp" -C "$classes" .
mv "$jar_path.tmp" "$jar_path"
