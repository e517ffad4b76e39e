"""What the durable store costs a statement: two gateways in one run, one with the embedded
SQLite store (the default: a statement's 201 waits for its record on disk) and one with
`store.kind = "memory"`, each with a live pyspark session; `1+1` round trips (POST -> result
available) and the POST alone, alternating between the two so drift hits both alike.

Prints medians and p99 for each and the ratio sqlite / memory at the median.
"""
import os, statistics, sys, tempfile, time

from gateway import Gateway, pct

ROUNDS = int(os.environ.get("BENCH_STATEMENTS", "200"))


def one(c, sid):
    t0 = time.monotonic()
    st = c.call("POST", f"/sessions/{sid}/statements", {"code": "1+1"})
    posted = time.monotonic() - t0
    while st["state"] not in ("available", "cancelled"):
        time.sleep(0.001)
        st = c.call("GET", f"/sessions/{sid}/statements/{st['id']}")
    assert st["output"]["data"]["text/plain"] == "2", st
    return time.monotonic() - t0, posted


def main():
    work = tempfile.mkdtemp(prefix="sparkgate-bench-store-")
    driver = 'spark.conf."spark.driver.memory"="768m"'
    gateways = {kind: Gateway(work, [driver, f'store.kind="{kind}"']) for kind in ("sqlite", "memory")}
    try:
        sessions = {}
        for name, c in gateways.items():
            sessions[name] = c.call("POST", "/sessions", {"kind": "pyspark"})["id"]
        for name, c in gateways.items():
            c.wait_state(sessions[name], ("idle",))
            for _ in range(10):  # warm-up
                one(c, sessions[name])
        rtt = {name: [] for name in gateways}
        post = {name: [] for name in gateways}
        for _ in range(ROUNDS):
            for name, c in gateways.items():
                r, p = one(c, sessions[name])
                rtt[name].append(r)
                post[name].append(p)
        for name in gateways:
            print(f"{name:6}: 1+1 round trip median {statistics.median(rtt[name]) * 1000:.2f} ms, "
                  f"p99 {pct(rtt[name], 99) * 1000:.2f} ms; POST (201) median "
                  f"{statistics.median(post[name]) * 1000:.2f} ms, p99 {pct(post[name], 99) * 1000:.2f} ms")
        ratio = statistics.median(rtt["sqlite"]) / statistics.median(rtt["memory"])
        post_ratio = statistics.median(post["sqlite"]) / statistics.median(post["memory"])
        print(f"sqlite / memory at the median over {ROUNDS} statements each: round trip {ratio:.2f}x, "
              f"POST {post_ratio:.2f}x")
        for name, c in gateways.items():
            c.call("DELETE", f"/sessions/{sessions[name]}")
    finally:
        for c in gateways.values():
            c.stop()


if __name__ == "__main__":
    sys.exit(main())
