#!/usr/bin/env python3
"""sparkgate batch benchmark: prints figures, asserts nothing.

For a trivial pyspark job (sum of 1000 numbers), median over BENCH_BATCH_RUNS runs of
  * POST /batches -> state running, and POST /batches -> state success, through sparkgate;
  * a bare spark-submit of the same file (start -> exit), measured in the same run;
on local[*] and on a two-worker standalone cluster started by this script (spark-class).

Usage: bench/run.sh batches
"""
import json, os, statistics, subprocess, sys, tempfile, time, urllib.request

from gateway import REPO, Gateway, free_port
RUNS = int(os.environ.get("BENCH_BATCH_RUNS", "3"))
PY = os.path.join(REPO, ".venv", "bin", "python")
SPARK_HOME = subprocess.check_output([PY, "-c", "import os,pyspark;print(os.path.dirname(pyspark.__file__))"], text=True).strip()
JOB = "from pyspark.sql import SparkSession\ns = SparkSession.builder.getOrCreate()\nprint('SUM', s.sparkContext.parallelize(range(1000)).sum())\ns.stop()\n"


def env():
    e = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "JAVA_HOME", "TMPDIR")}
    e.update(SPARK_HOME=SPARK_HOME, PYSPARK_PYTHON=PY, PYSPARK_DRIVER_PYTHON=PY, SPARK_LOCAL_IP="127.0.0.1")
    return e


POLL = float(os.environ.get("BENCH_POLL_SECONDS", "0.02"))


def through_gateway(gw, job):
    t0 = time.monotonic()
    bid = gw.call("POST", "/batches", {"file": job})["id"]
    running = None
    while True:
        st = gw.call("GET", f"/batches/{bid}/state")["state"]
        now = time.monotonic() - t0
        if st == "running" and running is None:
            running = now
        if st in ("success", "dead", "killed"):
            if st != "success":
                raise SystemExit(f"batch {bid} ended {st}")
            return (running if running is not None else now), now
        time.sleep(POLL)


def bare(master, job):
    t0 = time.monotonic()
    subprocess.run([os.path.join(SPARK_HOME, "bin", "spark-submit"), "--master", master, job],
                   env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.monotonic() - t0


def start_cluster(work):
    mport, mui = free_port(), free_port()
    procs = [subprocess.Popen([os.path.join(SPARK_HOME, "bin", "spark-class"), "org.apache.spark.deploy.master.Master",
                               "--host", "127.0.0.1", "--port", str(mport), "--webui-port", str(mui)],
                              env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    for i in range(2):
        procs.append(subprocess.Popen(
            [os.path.join(SPARK_HOME, "bin", "spark-class"), "org.apache.spark.deploy.worker.Worker",
             "--host", "127.0.0.1", "--webui-port", str(free_port()), "--cores", "1", "--memory", "1g",
             "--work-dir", os.path.join(work, f"worker{i}"), f"spark://127.0.0.1:{mport}"],
            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{mui}/json/", timeout=2) as r:
                if sum(1 for w in json.load(r)["workers"] if w["state"] == "ALIVE") == 2:
                    return f"spark://127.0.0.1:{mport}", procs
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit("the standalone cluster did not come up")


def main():
    work = tempfile.mkdtemp(prefix="sparkgate-batch-bench-")
    # Only the job's directory is users' to name (and shown in the sandbox), not the data dirs.
    os.makedirs(os.path.join(work, "jobs"))
    job = os.path.join(work, "jobs", "job.py")
    with open(job, "w") as f:
        f.write(JOB)
    master, procs = start_cluster(work)
    try:
        for label, m in (("local[*]", "local[*]"), ("standalone (2 workers)", master)):
            gw = Gateway(work, [f'spark.master="{m}"', f'spark.allowed_local_dirs=["{work}/jobs"]'])
            try:
                bares, runs, oks = [], [], []
                for _ in range(RUNS):
                    bares.append(bare(m, job))
                    r, s = through_gateway(gw, job)
                    runs.append(r)
                    oks.append(s)
            finally:
                gw.stop()
            mb = statistics.median(bares)
            print(f"{label}: bare spark-submit {mb:.2f} s; sparkgate POST -> running {statistics.median(runs):.2f} s, "
                  f"POST -> success {statistics.median(oks):.2f} s (ratio to bare {statistics.median(oks) / mb:.2f}x)")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    sys.exit(main())
