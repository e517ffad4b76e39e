#!/usr/bin/env python3
"""sparkgate crowd benchmark: a 9 a.m. rush of notebooks. Prints figures, asserts nothing.

BENCH_CROWD (120) simultaneous `POST /sessions` from three users against a gateway with the
default caps (sessions.max_sessions 32, max_concurrent_launches 4, per-user quotas from
BENCH_USER_QUOTA, default 16 live sessions each). Prints the answers (201 / 429, and whether
every 429 carried Retry-After), how long until every accepted session was idle (or ended, with
its reason), the order in which the sessions started against the order they were accepted,
the gateway's peak RSS, and, after deleting them all, the launch processes left (should be 0).
The baseline in the same run: one session alone, POST -> idle.

Usage: bench/run.sh crowd
"""
import concurrent.futures, json, os, subprocess, sys, tempfile, time, urllib.error, urllib.request

from gateway import REPO, Gateway

CROWD = int(os.environ.get("BENCH_CROWD", "120"))
QUOTA = int(os.environ.get("BENCH_USER_QUOTA", "16"))
USERS = ("alice", "bob", "carol")


def call_as(gw, user, method, path, body=None):
    req = urllib.request.Request(f"https://127.0.0.1:{gw.port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {gw.tokens[user]}"})
    with urllib.request.urlopen(req, context=gw.ctx, timeout=600) as r:
        return json.loads(r.read() or b"null")


def post(gw, user):
    req = urllib.request.Request(f"https://127.0.0.1:{gw.port}/sessions", method="POST",
                                 data=json.dumps({"kind": "pyspark"}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {gw.tokens[user]}"})
    try:
        with urllib.request.urlopen(req, context=gw.ctx, timeout=600) as r:
            return r.status, json.loads(r.read()), None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), e.headers.get("Retry-After")


def launch_processes(data, gateway_pid):
    """Processes other than the gateway whose command line names its data directory
    (supervisors, spark-submit, drivers)."""
    found = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != gateway_pid:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if data.encode() in f.read():
                        found += 1
            except OSError:
                pass
    return found


def main():
    work = tempfile.mkdtemp(prefix="sparkgate-bench-crowd-")
    data = os.path.join(work, "data")
    os.makedirs(data, mode=0o700)
    sparkgate = os.path.join(REPO, "target", "release", "sparkgate")
    common = ['auth.methods=["jwt"]', "auth.dangerous_allow_anonymous=false",
              'spark.conf."spark.driver.memory"="512m"']
    sets = [f"--set={s}" for s in [f'server.data_dir="{data}"'] + common]
    tokens = {u: subprocess.check_output([sparkgate, *sets, "token", "--user", u, "--ttl", "2h"], text=True,
                                         cwd=REPO).strip() for u in USERS}
    gw = Gateway(work, common, data=data, users=USERS, headers={"Authorization": f"Bearer {tokens['alice']}"})
    with open(os.path.join(work, "policies", "acl.toml"), "w") as f:
        f.write(f'[create]\nusers = {json.dumps(list(USERS))}\n[quotas]\n'
                f"default = {{ max_sessions = {QUOTA}, max_concurrent_launches = 2 }}\n")
    time.sleep(3)  # the policy reload interval
    gw.tokens = tokens
    try:
        t0 = time.monotonic()
        alone = gw.call("POST", "/sessions", {"kind": "pyspark"})["id"]
        gw.wait_state(alone, ("idle",))
        baseline = time.monotonic() - t0
        gw.call("DELETE", f"/sessions/{alone}")
        users = [USERS[i % len(USERS)] for i in range(CROWD)]
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=CROWD) as pool:
            answers = list(pool.map(lambda u: post(gw, u), users))
        answered = time.monotonic() - t0
        owner = {body["id"]: u for u, (status, body, _) in zip(users, answers) if status == 201}
        accepted = sorted(owner)
        refused = [(status, retry) for status, _, retry in answers if status != 201]
        print(f"{CROWD} simultaneous POST /sessions from {len(USERS)} users, answered in {answered:.2f} s: "
              f"{len(accepted)} x 201, {len(refused)} refused "
              f"({sorted(set(s for s, _ in refused))}, Retry-After on {sum(1 for _, r in refused if r)})", flush=True)
        started, ends, peak = {}, {}, 0.0
        while len(ends) < len(accepted):
            for sid in accepted:
                if sid in ends:
                    continue
                st = call_as(gw, owner[sid], "GET", f"/sessions/{sid}/state")["state"]
                if st != "not_started" and sid not in started:
                    started[sid] = time.monotonic() - t0
                if st in ("idle", "dead", "error", "killed"):
                    ends[sid] = (st, time.monotonic() - t0)
            with open(f"/proc/{gw.pid}/status") as f:
                peak = max(peak, next(int(r.split()[1]) for r in f if r.startswith("VmRSS:")) / 1024)
            time.sleep(0.2)
        order = [sid for sid, _ in sorted(started.items(), key=lambda kv: kv[1])]
        idle = [t for st, t in ends.values() if st == "idle"]
        others = {sid: st for sid, (st, _) in ends.items() if st != "idle"}
        per_user = {}
        for sid in order:
            per_user.setdefault(owner[sid], []).append(sid)
        fifo = all(ids == sorted(ids) for ids in per_user.values())
        print(f"baseline: one session alone POST -> idle {baseline:.2f} s", flush=True)
        print(f"all {len(accepted)} accepted sessions ended waiting after {max(t for _, t in ends.values()):.1f} s: "
              f"{len(idle)} idle (last at {max(idle, default=0):.1f} s), others {others or 'none'}", flush=True)
        print(f"start order FIFO within each user: {fifo}; first twelve starts by owner: "
              f"{[owner[sid] for sid in order[:12]]}", flush=True)
        print(f"gateway peak RSS during the rush {peak:.1f} MiB", flush=True)
        for sid in accepted:
            try:
                call_as(gw, owner[sid], "DELETE", f"/sessions/{sid}")
            except urllib.error.HTTPError:
                pass
        end = time.monotonic() + 30
        while launch_processes(data, gw.pid) and time.monotonic() < end:
            time.sleep(0.5)
        print(f"after deleting them: {launch_processes(data, gw.pid)} launch processes left", flush=True)
    finally:
        gw.stop()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
