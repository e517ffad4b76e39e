#!/usr/bin/env python3
"""sparkgate warm-driver benchmark: prints figures, asserts nothing but correctness.

In the same run and alternating:
  * bare cold: POST /sessions -> state idle on a gateway without warm drivers (the baseline);
  * cold beside a pool: the same with a `name` (never served warm) on a gateway with warm
    drivers on (`sessions.warm.max_drivers=1`, `others=1`), sent just after a claim so the
    pool refills meanwhile: what a pool costs a request that it cannot serve;
  * warm: once the pool's driver of the class is up, POST /sessions of that class -> idle
    (the 201 itself says idle when a warm driver is claimed).
Each claimed session runs `1+1` before it is deleted, so a figure is of a working session.

Usage: bench/run.sh warm
"""
import os, re, statistics, tempfile, time

from gateway import Gateway, pct

RUNS = int(os.environ.get("BENCH_WARM_RUNS", "5"))


def warm_idle(gw):
    text = gw.raw("GET", "/metrics").decode()
    m = re.search(r'^sparkgate_warm_drivers\{state="idle"\} (\d+)', text, re.M)
    return int(m.group(1)) if m else 0


def wait_warm(gw, limit=300):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if warm_idle(gw) >= 1:
            return
        time.sleep(0.05)
    raise SystemExit("no warm driver came up; see " + gw.log)


def main():
    work = tempfile.mkdtemp(prefix="sparkgate-bench-warm-")
    gw = Gateway(work, ['spark.conf."spark.driver.memory"="768m"', "sessions.warm.max_drivers=1",
                        "sessions.warm.others=1"], admins=("anonymous",))
    os.makedirs(os.path.join(work, "bare"))
    bare_gw = Gateway(os.path.join(work, "bare"), ['spark.conf."spark.driver.memory"="768m"'])
    body = {"kind": "pyspark"}
    try:
        # Teaches the pool the class (this first one is cold too, and not counted).
        first = gw.call("POST", "/sessions", body)["id"]
        gw.wait_state(first, ("idle",))
        gw.call("DELETE", f"/sessions/{first}")
        bare, cold, warm, answered_idle = [], [], [], 0
        for i in range(RUNS):
            # Nothing else starts: the pool is full.
            wait_warm(gw)
            t0 = time.monotonic()
            sid = bare_gw.call("POST", "/sessions", body)["id"]
            bare_gw.wait_state(sid, ("idle",))
            bare.append(time.monotonic() - t0)
            bare_gw.call("DELETE", f"/sessions/{sid}")
            t0 = time.monotonic()
            info = gw.call("POST", "/sessions", body)
            if info["state"] == "idle":
                answered_idle += 1
            gw.wait_state(info["id"], ("idle",))
            warm.append(time.monotonic() - t0)
            st = gw.call("POST", f"/sessions/{info['id']}/statements", {"code": "1+1"})
            st = gw.call("GET", f"/sessions/{info['id']}/statements/{st['id']}?wait=30s")
            assert st["output"]["data"]["text/plain"] == "2", st
            gw.call("DELETE", f"/sessions/{info['id']}")
            # The pool refills now: a request it cannot serve starts beside the refill.
            t0 = time.monotonic()
            sid = gw.call("POST", "/sessions", {**body, "name": f"cold-{i}"})["id"]
            gw.wait_state(sid, ("idle",))
            cold.append(time.monotonic() - t0)
            gw.call("DELETE", f"/sessions/{sid}")
        print(f"sessions ready (POST -> idle), {RUNS} each, alternating in one run:")
        print(f"  cold, no warm drivers   : median {statistics.median(bare):.3f} s  max {max(bare):.3f} s")
        print(f"  cold beside a pool      : median {statistics.median(cold):.3f} s  max {max(cold):.3f} s"
              f"  ({statistics.median(cold) / statistics.median(bare):.2f}x)")
        print(f"  warm driver claimed     : median {statistics.median(warm) * 1000:.1f} ms  "
              f"p99 {pct(warm, 99) * 1000:.1f} ms  max {max(warm) * 1000:.1f} ms")
        print(f"  ratio warm/cold (medians): {statistics.median(warm) / statistics.median(bare):.4f}")
        print(f"  201 answered `idle` at once: {answered_idle} of {RUNS}")
    finally:
        gw.stop()
        bare_gw.stop()


if __name__ == "__main__":
    main()
