#!/usr/bin/env python3
"""sparkgate session benchmark: prints figures, asserts nothing.

  * cold session start (POST /sessions -> state idle) against a bare spark-submit of an empty
    pyspark app (spark-submit start -> SparkSession ready), both measured in this run;
  * the round trip of `1+1` (POST statement -> result available) over N statements in one
    session: median and p99, against the round trip of GET /version (the HTTP floor).

Usage: bench/run.sh  (builds the release binary, then runs this with the repo's .venv)
"""
import json, os, socket, ssl, statistics, subprocess, sys, tempfile, time, urllib.request

# The gateway refuses to run as root unless told (server.dangerous_run_as_root).
ROOT = ["--set", "server.dangerous_run_as_root=true"] if os.geteuid() == 0 else []

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("BENCH_START_RUNS", "3"))
STATEMENTS = int(os.environ.get("BENCH_STATEMENTS", "200"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


class Client:
    def __init__(self, base, ca):
        self.base = base
        self.ctx = ssl.create_default_context(cafile=ca)

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=300) as r:
            return json.loads(r.read() or b"null")


def wait_state(c, sid, want, limit=300):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        st = c.call("GET", f"/sessions/{sid}/state")["state"]
        if st in want:
            return st
        if st in ("dead", "error", "killed"):
            raise SystemExit(f"session {sid} ended {st}")
        time.sleep(0.02)
    raise SystemExit(f"session {sid} not {want} in {limit}s")


def bare_spark_submit(spark_submit, env, workdir):
    app = os.path.join(workdir, "empty_app.py")
    with open(app, "w") as f:
        f.write("from pyspark.sql import SparkSession\n"
                "s = SparkSession.builder.getOrCreate()\nprint('READY', flush=True)\ns.stop()\n")
    t0 = time.monotonic()
    p = subprocess.Popen([spark_submit, "--master", "local[*]", "--conf", "spark.driver.memory=768m", app],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    ready = None
    for line in p.stdout:
        if line.startswith("READY") and ready is None:
            ready = time.monotonic() - t0
    p.wait()
    return ready


def main():
    venv_py = os.path.join(REPO, ".venv", "bin", "python")
    spark_home = subprocess.check_output(
        [venv_py, "-c", "import os,pyspark;print(os.path.dirname(pyspark.__file__))"], text=True).strip()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "JAVA_HOME", "TMPDIR")}
    env.update(SPARK_HOME=spark_home, PYSPARK_PYTHON=venv_py, PYSPARK_DRIVER_PYTHON=venv_py)
    work = tempfile.mkdtemp(prefix="sparkgate-bench-")
    # The bench runs as the development `anonymous` user; this policy lets it create sessions.
    os.makedirs(os.path.join(work, "policies"))
    with open(os.path.join(work, "policies", "acl.toml"), "w") as f:
        f.write('[create]\nusers = ["anonymous"]\n')
    port = free_port()
    gw = subprocess.Popen(
        [os.path.join(REPO, "target", "release", "sparkgate"), "serve",
         "--set", f'server.bind="127.0.0.1:{port}"', "--set", f'server.data_dir="{work}/data"',
         "--set", "auth.dangerous_allow_anonymous=true", "--set", f'spark.venv="{REPO}/.venv"',
         "--set", 'spark.conf."spark.driver.memory"="768m"', "--set", f'acl.policy_dir="{work}/policies"',
         "--set", "auth.methods=[]"] + ROOT,
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "gateway.log"), "w"))
    try:
        ca = os.path.join(work, "data", "tls", "dev-ca.pem")
        for _ in range(600):  # the gateway writes its dev CA on first start
            if os.path.exists(ca) or gw.poll() is not None:
                break
            time.sleep(0.1)
        if gw.poll() is not None:
            raise SystemExit("the gateway exited; see " + os.path.join(work, "gateway.log"))
        c = Client(f"https://127.0.0.1:{port}", ca)
        for _ in range(600):
            try:
                c.call("GET", "/version")
                break
            except Exception:
                time.sleep(0.1)
        bare, cold = [], []
        for i in range(RUNS):
            bare.append(bare_spark_submit(os.path.join(spark_home, "bin", "spark-submit"), env, work))
            t0 = time.monotonic()
            sid = c.call("POST", "/sessions", {"kind": "pyspark"})["id"]
            wait_state(c, sid, ("idle",))
            cold.append(time.monotonic() - t0)
            c.call("DELETE", f"/sessions/{sid}")
        sid = c.call("POST", "/sessions", {"kind": "pyspark"})["id"]
        wait_state(c, sid, ("idle",))
        for _ in range(10):  # warm-up
            st = c.call("POST", f"/sessions/{sid}/statements", {"code": "1+1"})
        rtts, floor = [], []
        for _ in range(STATEMENTS):
            t0 = time.monotonic()
            st = c.call("POST", f"/sessions/{sid}/statements", {"code": "1+1"})
            while st["state"] not in ("available", "cancelled"):
                time.sleep(0.001)
                st = c.call("GET", f"/sessions/{sid}/statements/{st['id']}")
            rtts.append(time.monotonic() - t0)
            assert st["output"]["data"]["text/plain"] == "2", st
        for _ in range(STATEMENTS):
            t0 = time.monotonic()
            c.call("GET", "/version")
            floor.append(time.monotonic() - t0)
        c.call("DELETE", f"/sessions/{sid}")
        mb, mc = statistics.median(bare), statistics.median(cold)
        print(f"cold start, median of {RUNS}: bare spark-submit to SparkSession {mb:.2f} s; "
              f"sparkgate POST -> idle {mc:.2f} s; ratio {mc / mb:.2f}x")
        print(f"1+1 round trip over {STATEMENTS} statements: median {statistics.median(rtts) * 1000:.1f} ms, "
              f"p99 {pct(rtts, 99) * 1000:.1f} ms")
        print(f"GET /version round trip (HTTPS floor): median {statistics.median(floor) * 1000:.2f} ms, "
              f"p99 {pct(floor, 99) * 1000:.2f} ms; 1+1 median / floor = "
              f"{statistics.median(rtts) / statistics.median(floor):.1f}x")
    finally:
        gw.terminate()
        gw.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
