"""Recovery, measured with the release binary killed by SIGKILL.

soak (default): one gateway with a live pyspark session; 20 rounds (BENCH_ROUNDS) of: a
statement that sleeps 2 s running and one queued behind it, SIGKILL, restart on the same data
directory. Counts rounds recovered, statements lost (both must come back with the right
output) and processes left after the last round; times restart -> the session answering
`idle` with both statements done, next to the bare baseline measured in the same run: a new
session's start to `idle` (what losing the session would cost).

restart: a store holding 10,000 finished and 100 live session records (written directly, as
an earlier run would have left them; the live ones' launches are gone, so start-up ends them
`dead`), then the time from spawning the gateway to its first answer to `GET /sessions`, and
its RSS then; next to the same on an empty data directory, in the same run.
"""
import json, os, shutil, sqlite3, statistics, subprocess, sys, tempfile, time

from gateway import Gateway, pct

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
RECOVERY = ['spark.conf."spark.driver.memory"="768m"', "recovery.enabled=true"]


def processes_naming(path):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if path.encode() in f.read():
                    with open(f"/proc/{pid}/stat") as s:
                        if s.read().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(pid))
        except OSError:
            pass
    return found


def wait_statement(gw, sid, st_id, limit=300):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        st = gw.call("GET", f"/sessions/{sid}/statements/{st_id}")
        if st["state"] in ("available", "cancelled"):
            return st
        time.sleep(0.02)
    return None


def soak():
    work = tempfile.mkdtemp(prefix="sparkgate-bench-recovery-")
    data = os.path.join(work, "data")
    gw = Gateway(work, RECOVERY, data=data)
    # The bare baseline: a new session's start to idle, in this run.
    baseline = []
    for _ in range(3):
        t0 = time.monotonic()
        sid = gw.call("POST", "/sessions", {"kind": "pyspark"})["id"]
        gw.wait_state(sid, ("idle",))
        baseline.append(time.monotonic() - t0)
        gw.call("DELETE", f"/sessions/{sid}")
    sid = gw.call("POST", "/sessions", {"kind": "pyspark"})["id"]
    gw.wait_state(sid, ("idle",))
    recovered, lost, times = 0, 0, []
    for n in range(1, ROUNDS + 1):
        slow = gw.call("POST", f"/sessions/{sid}/statements", {"code": f"import time; time.sleep(2); {n} * 7"})
        queued = gw.call("POST", f"/sessions/{sid}/statements", {"code": f"{n} + 1"})
        while gw.call("GET", f"/sessions/{sid}/statements/{slow['id']}")["state"] != "running":
            time.sleep(0.02)
        gw.kill9()
        gw = Gateway(work, RECOVERY, data=data)
        started = gw.started
        try:
            gw.wait_state(sid, ("idle",), limit=600)
            outputs = [wait_statement(gw, sid, s["id"]) for s in (slow, queued)]
            times.append(time.monotonic() - started)
            got = [o and o["output"]["data"]["text/plain"] for o in outputs]
            lost += sum(1 for g, want in zip(got, [str(n * 7), str(n + 1)]) if g != want)
            recovered += 1
        except SystemExit as e:
            print(f"round {n}: not recovered: {e}")
            lost += 2
    gw.call("DELETE", f"/sessions/{sid}")
    gw.kill9()
    time.sleep(2)
    left = processes_naming(data)
    print(f"soak: {recovered}/{ROUNDS} rounds recovered, {lost} statements lost, {len(left)} processes left")
    print(f"restart -> session idle with both statements done: median {statistics.median(times):.2f} s, "
          f"p99 {pct(times, 99):.2f} s, max {max(times):.2f} s")
    print(f"bare baseline, a new session's start to idle: median {statistics.median(baseline):.2f} s "
          f"(recovery / new session at the median: {statistics.median(times) / statistics.median(baseline):.2f}x)")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if recovered == ROUNDS and lost == 0 and not left else 1


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def first_listing(work, data):
    gw = Gateway(work, RECOVERY, data=data)
    listing = gw.call("GET", "/sessions?size=100")
    took = time.monotonic() - gw.started
    rss = rss_kib(gw.pid)
    gw.kill9()
    return took, rss, listing["total"]


def restart():
    work = tempfile.mkdtemp(prefix="sparkgate-bench-restart-")
    empty, full = os.path.join(work, "empty"), os.path.join(work, "full")
    # A first start makes the data directory and its database; then the records go in.
    Gateway(work, RECOVERY, data=full).kill9()
    db = sqlite3.connect(os.path.join(full, "state", "store.db"))
    now = int(time.time() * 1000)
    def record(i, state):
        return json.dumps({
            "id": i, "kind": "pyspark", "owner": "anonymous", "effectiveUser": "anonymous",
            "submit": {"conf": {}}, "heartbeatTimeoutInSecond": 0, "ttl": None, "idleTimeout": None,
            "secretNonce": os.urandom(16).hex(), "state": state, "appId": f"local-{now + i}",
            "nextStatementId": 1, "process": {"pid": 1, "startTime": 0, "bootId": "an-earlier-boot"},
            "yarnTag": None, "clusterDriver": None, "createdAt": now - 3_600_000,
            "finishedAt": now - 60_000 if state == "dead" else None}).encode()
    with db:
        for i in range(10_100):
            state = "dead" if i < 10_000 else "idle"
            db.execute("INSERT INTO records (kind, id, version, name, effective_user, bytes) VALUES "
                       "('session', ?, 1, NULL, 'anonymous', ?)", (i, record(i, state)))
            db.execute("INSERT INTO statements (session, id, version, bytes) VALUES (?, 0, 1, ?)",
                       (i, json.dumps({"id": 0, "code": "1+1", "state": "available", "progress": 1.0,
                                       "output": {"status": "ok", "execution_count": 0,
                                                  "data": {"text/plain": "2"}},
                                       "started": now, "completed": now, "kind": "pyspark"}).encode()))
        db.execute("UPDATE counters SET next = 10100 WHERE kind = 'session'")
    db.close()
    for directory in (os.path.join(full, "sessions", str(i)) for i in range(10_100)):
        os.makedirs(directory, exist_ok=True)
    base, base_rss, _ = first_listing(work, empty)
    took, rss, total = first_listing(work, full)
    print(f"restart with 10,000 finished and 100 live records: first GET /sessions after {took:.2f} s "
          f"(listing {total}), RSS {rss / 1024:.1f} MiB")
    print(f"bare baseline, an empty data directory: {base:.2f} s, RSS {base_rss / 1024:.1f} MiB "
          f"(ratio {took / base:.2f}x time, {rss / base_rss:.2f}x RSS)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(restart() if sys.argv[1:] == ["restart"] else soak())
