#!/usr/bin/env python3
"""sparkgate memory benchmark: prints figures, asserts nothing.

What a large statement history costs the gateway while clients read it: one pyspark session
holds N statements whose outputs are M MiB each; then P clients list the statements at once
(GET /sessions/{id}/statements, the whole history each), repeatedly. Printed: the gateway's
resident memory (VmRSS, sampled every 5 ms) idle with that history, its peak while the lists are
read, and the growth per reader against the history's size — next to the baseline of the same
readers asking for GET /version in the same run.

Usage: bench/run.sh memory  (builds the release binary, then runs this with the repo's .venv)
"""
import os, sys, tempfile, threading, time

from gateway import Gateway

OUTPUTS = int(os.environ.get("BENCH_OUTPUTS", "3"))
OUTPUT_MIB = int(os.environ.get("BENCH_OUTPUT_MIB", "6"))
READERS = int(os.environ.get("BENCH_READERS", "6"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def peak_while(pid, work):
    """The highest VmRSS of `pid` while `work` runs in READERS threads, ROUNDS times each."""
    peak, done = [rss_mib(pid)], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    readers = [threading.Thread(target=lambda: [work() for _ in range(ROUNDS)]) for _ in range(READERS)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    done.set()
    sampler.join()
    return peak[0]


def main():
    work = tempfile.mkdtemp(prefix="sparkgate-bench-")
    c = Gateway(work, ['spark.conf."spark.driver.memory"="768m"', "rpc.max_frame_bytes=134217728",
                       f"sessions.max_output_bytes={(OUTPUT_MIB + 1) << 20}"])
    try:
        sid = c.call("POST", "/sessions", {"kind": "pyspark"})["id"]
        c.wait_state(sid, ("idle",))
        for _ in range(OUTPUTS):
            st = c.call("POST", f"/sessions/{sid}/statements", {"code": f"'x' * ({OUTPUT_MIB} << 20)"})
            while st["state"] not in ("available", "cancelled"):
                time.sleep(0.1)
                st = c.call("GET", f"/sessions/{sid}/statements/{st['id']}")
        history = len(c.raw("GET", f"/sessions/{sid}/statements")) / 1048576.0
        time.sleep(1)
        idle = rss_mib(c.pid)
        floor = peak_while(c.pid, lambda: c.raw("GET", "/version"))
        listed = peak_while(c.pid, lambda: c.raw("GET", f"/sessions/{sid}/statements"))
        c.call("DELETE", f"/sessions/{sid}")
        print(f"statement history: {history:.1f} MiB ({OUTPUTS} outputs of {OUTPUT_MIB} MiB); gateway RSS idle "
              f"{idle:.0f} MiB")
        print(f"{READERS} parallel readers x {ROUNDS}: GET /version peak {floor:.0f} MiB (+{floor - idle:.0f}); "
              f"GET .../statements peak {listed:.0f} MiB (+{listed - idle:.0f}); growth per reader "
              f"{(listed - idle) / READERS:.1f} MiB = {(listed - idle) / READERS / history:.2f}x the history")
    finally:
        c.stop()


if __name__ == "__main__":
    sys.exit(main())
