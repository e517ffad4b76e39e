#!/usr/bin/env python3
"""sparkgate session benchmark: prints figures, asserts nothing.

  * cold session start (POST /sessions -> state idle) against a bare spark-submit of an empty
    pyspark app (spark-submit start -> SparkSession ready), both measured in this run;
  * the round trip of `1+1` (POST statement -> result available) over N statements in one
    session, polling every 1 ms and with one waiting GET (`?wait=`): median and p99, against the
    round trip of GET /version (the HTTP floor).

Usage: bench/run.sh  (builds the release binary, then runs this with the repo's .venv)
"""
import os, statistics, subprocess, sys, tempfile, time

from gateway import REPO, Gateway, pct

RUNS = int(os.environ.get("BENCH_START_RUNS", "3"))
STATEMENTS = int(os.environ.get("BENCH_STATEMENTS", "200"))


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


def waited_round_trips(client, sid):
    """`1+1` as POST, then one waiting GET, STATEMENTS times: the round trips in seconds."""
    times = []
    for _ in range(STATEMENTS):
        t0 = time.monotonic()
        st = client.call("POST", f"/sessions/{sid}/statements", {"code": "1+1"})
        st = client.call("GET", f"/sessions/{sid}/statements/{st['id']}?wait=30s")
        times.append(time.monotonic() - t0)
        assert st["output"]["data"]["text/plain"] == "2", st
    return times


def version_round_trips(client):
    """GET /version STATEMENTS times: the HTTPS floor of the same client, in seconds."""
    times = []
    for _ in range(STATEMENTS):
        t0 = time.monotonic()
        client.call("GET", "/version")
        times.append(time.monotonic() - t0)
    return times


def main():
    venv_py = os.path.join(REPO, ".venv", "bin", "python")
    spark_home = subprocess.check_output(
        [venv_py, "-c", "import os,pyspark;print(os.path.dirname(pyspark.__file__))"], text=True).strip()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "JAVA_HOME", "TMPDIR")}
    env.update(SPARK_HOME=spark_home, PYSPARK_PYTHON=venv_py, PYSPARK_DRIVER_PYTHON=venv_py)
    work = tempfile.mkdtemp(prefix="sparkgate-bench-")
    c = Gateway(work, ['spark.conf."spark.driver.memory"="768m"'])
    try:
        bare, cold = [], []
        for i in range(RUNS):
            bare.append(bare_spark_submit(os.path.join(spark_home, "bin", "spark-submit"), env, work))
            t0 = time.monotonic()
            sid = c.call("POST", "/sessions", {"kind": "pyspark"})["id"]
            c.wait_state(sid, ("idle",))
            cold.append(time.monotonic() - t0)
            c.call("DELETE", f"/sessions/{sid}")
        sid = c.call("POST", "/sessions", {"kind": "pyspark"})["id"]
        c.wait_state(sid, ("idle",))
        for _ in range(10):  # warm-up
            st = c.call("POST", f"/sessions/{sid}/statements", {"code": "1+1"})
        rtts = []
        for _ in range(STATEMENTS):
            t0 = time.monotonic()
            st = c.call("POST", f"/sessions/{sid}/statements", {"code": "1+1"})
            while st["state"] not in ("available", "cancelled"):
                time.sleep(0.001)
                st = c.call("GET", f"/sessions/{sid}/statements/{st['id']}")
            rtts.append(time.monotonic() - t0)
            assert st["output"]["data"]["text/plain"] == "2", st
        # The same with a waiting GET instead of polling: POST, then one `?wait=` request.
        waited = waited_round_trips(c, sid)
        floor = version_round_trips(c)
        # The same on one kept-alive connection (what a notebook's client does); its floor is
        # GET /version on a kept-alive connection.
        k = c.keep_alive()
        kept, kept_floor = waited_round_trips(k, sid), version_round_trips(k)
        # Statements per second through the session: batches of as many as its queue takes
        # (sessions.max_queued_statements, 20), each batch posted then its last one awaited.
        batch, total = 20, max(STATEMENTS, 300)
        t0 = time.monotonic()
        for _ in range(total // batch):
            ids = [k.call("POST", f"/sessions/{sid}/statements", {"code": "1+1"})["id"] for _ in range(batch)]
            last = k.call("GET", f"/sessions/{sid}/statements/{ids[-1]}?wait=30s")
            assert last["state"] == "available", last
        rate = (total // batch * batch) / (time.monotonic() - t0)
        k.close()
        c.call("DELETE", f"/sessions/{sid}")
        mb, mc = statistics.median(bare), statistics.median(cold)
        print(f"cold start, median of {RUNS}: bare spark-submit to SparkSession {mb:.2f} s; "
              f"sparkgate POST -> idle {mc:.2f} s; ratio {mc / mb:.2f}x")
        print(f"1+1 round trip over {STATEMENTS} statements: median {statistics.median(rtts) * 1000:.1f} ms, "
              f"p99 {pct(rtts, 99) * 1000:.1f} ms")
        print(f"1+1 with one waiting GET (?wait=30s) instead of polling: median "
              f"{statistics.median(waited) * 1000:.1f} ms, p99 {pct(waited, 99) * 1000:.1f} ms")
        print(f"GET /version round trip (HTTPS floor): median {statistics.median(floor) * 1000:.2f} ms, "
              f"p99 {pct(floor, 99) * 1000:.2f} ms; 1+1 median / floor = "
              f"{statistics.median(rtts) / statistics.median(floor):.1f}x")
        print(f"on one kept-alive connection: 1+1 POST + waiting GET median {statistics.median(kept) * 1000:.2f} ms, "
              f"p99 {pct(kept, 99) * 1000:.2f} ms; GET /version floor median {statistics.median(kept_floor) * 1000:.2f} ms "
              f"(round trip / floor {statistics.median(kept) / statistics.median(kept_floor):.1f}x)")
        print(f"statements through one session, {batch} queued at a time: {rate:.0f} statements/s")
    finally:
        c.stop()


if __name__ == "__main__":
    sys.exit(main())
