#!/usr/bin/env python3
"""sparkgate authenticated-throughput benchmark: prints figures, asserts nothing.

Closed-loop load (bench_load: N keep-alive HTTP/1.1 connections over TLS, like `wrk -c N`)
against, in the same run:

  * the floor: examples/bench_floor.rs, a minimal axum + rustls server with the gateway's TLS
    settings that answers every GET with a fixed body as large as the gateway's answer;
  * the gateway with the whole stack on (TLS, authentication, ACL, audit, metrics):
    `GET /sessions/{id}/state` with a JWT, with a client certificate, and with the SPNEGO
    cookie when a KDC can be started (krb5-kdc); `GET /version` with a JWT and without
    credentials (the 401 path).

Each line gives requests/s and p99 next to the floor's, as ratios. The figures are those of one
machine in one run: compare within a run, not across machines.

Usage: bench/run.sh throughput  (BENCH_CONNECTIONS=64, BENCH_SECONDS=10, BENCH_WARMUP=2)
"""
import json, os, subprocess, sys, tempfile, time

from gateway import REPO, Gateway, free_port

CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
WARMUP = float(os.environ.get("BENCH_WARMUP", "2"))
RELEASE = os.path.join(REPO, "target", "release")
SPARKGATE = os.path.join(RELEASE, "sparkgate")


ANSWERED = [0]  # every request the load generators got an answer to, warm-up included


def load(url, ca, *extra, connections=CONNECTIONS, gateway=True):
    out = subprocess.check_output(
        [os.path.join(RELEASE, "examples", "bench_load"), url, "--ca", ca, "--connections", str(connections),
         "--seconds", str(SECONDS), "--warmup", str(WARMUP), *extra], text=True)
    fig = json.loads(out.strip().splitlines()[-1])
    if gateway:
        ANSWERED[0] += fig["answered"]
    return fig


def audit_figures(data, gateway_requests):
    """Whether the trail kept up (records, losses) and how long `audit verify` takes on it."""
    audit = os.path.join(data, "audit")
    files = sorted(f for f in os.listdir(audit) if f.startswith("audit.log."))
    files = [os.path.join(audit, f) for f in files] + [os.path.join(audit, "audit.log")]
    records = lost = repeats = 0
    for path in files:
        with open(path, "rb") as f:
            for raw in f:
                records += 1
                if b'"repeated":' in raw:
                    repeats += json.loads(raw)["repeated"]
                if b'"audit_records_lost"' in raw:
                    lost += int(json.loads(raw)["reason"].split()[0])
    t0 = time.monotonic()
    out = subprocess.run([SPARKGATE, "audit", "verify", *files], capture_output=True, text=True)
    took = time.monotonic() - t0
    print(f"audit trail: {records} records, {repeats} repeated refusals counted in summaries, for "
          f"{gateway_requests} requests answered by the gateway; {lost} lost; {len(files)} files, {sum(os.path.getsize(f) for f in files) / 2**20:.0f} MiB", flush=True)
    print(f"audit verify: {took:.2f} s for {records} records ({records / took / 1e6:.2f} M records/s, "
          f"1M records in {1e6 / (records / took):.2f} s): {(out.stdout + out.stderr).strip().splitlines()[-1]}",
          flush=True)


def client_pki(work):
    """A client CA and a certificate for alice (EC P-256, clientAuth), with openssl."""
    ca_key, ca, key, csr, cert = (os.path.join(work, n) for n in
                                  ("client-ca.key", "client-ca.pem", "alice.key", "alice.csr", "alice.pem"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    subprocess.run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
                    "-subj", "/CN=bench client CA"], **quiet)
    subprocess.run(["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=alice"], **quiet)
    ext = os.path.join(work, "client.ext")
    with open(ext, "w") as f:
        f.write("extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                    "-out", cert, "-days", "2", "-extfile", ext], **quiet)
    return ca, cert, key


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) / 1024
    return float("nan")


def line(name, fig, floor, expect="200"):
    ratio = fig["rps"] / floor["rps"]
    p99 = fig["p99_ms"] / floor["p99_ms"]
    bad = fig["errors"] + sum(n for s, n in fig["statuses"].items() if s != expect)
    print(f"{name:<44} {fig['rps']:>9.0f} req/s ({ratio:.2f}x floor)  p50 {fig['p50_ms']:.2f} ms  "
          f"p99 {fig['p99_ms']:.2f} ms ({p99:.2f}x floor)  unexpected {bad}", flush=True)


def main():
    work = tempfile.mkdtemp(prefix="sparkgate-bench-tp-")
    data = os.path.join(work, "data")
    os.makedirs(data, mode=0o700)
    client_ca, client_cert, client_key = client_pki(work)
    common = ['auth.methods=["client_cert","jwt"]', "auth.dangerous_allow_anonymous=false",
              f'auth.client_cert.ca="{client_ca}"', "server.max_connections_per_ip=4096"]
    sets = [f"--set={s}" for s in [f'server.data_dir="{data}"'] + common]
    token = subprocess.check_output([SPARKGATE, *sets, "token", "--user", "alice", "--ttl", "2h"],
                                    text=True, cwd=REPO).strip()
    bearer = {"Authorization": f"Bearer {token}"}
    extra_sets = os.environ.get("BENCH_SETS", "").split()
    gw = Gateway(work, common + extra_sets, data=data, users=("alice",), headers=bearer)
    floor = None
    try:
        rss_start = rss_mib(gw.pid)
        sid = gw.call("POST", "/sessions", {"kind": "pyspark"})["id"]
        gw.wait_state(sid, ("idle",))
        state_path = f"/sessions/{sid}/state"
        body = gw.raw("GET", state_path).decode()
        ca = os.path.join(data, "tls", "dev-ca.pem")
        port = free_port()
        floor = subprocess.Popen([os.path.join(RELEASE, "examples", "bench_floor"),
                                  os.path.join(data, "tls", "server.pem"), os.path.join(data, "tls", "server-key.pem"),
                                  str(port), body], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        # What a burst of ~10k requests leaves behind, idle again after 2 s.
        burst = json.loads(subprocess.check_output(
            [os.path.join(RELEASE, "examples", "bench_load"), f"https://127.0.0.1:{gw.port}{state_path}", "--ca", ca,
             "--connections", str(CONNECTIONS), "--seconds", "0.4", "--warmup", "0",
             "--header", f"Authorization: Bearer {token}"], text=True).strip().splitlines()[-1])
        time.sleep(2)
        rss_burst = rss_mib(gw.pid)
        print(f"{CONNECTIONS} keep-alive connections, {WARMUP:.0f} s warm-up + {SECONDS:.0f} s measured each; "
              f"answer body {len(body)} bytes", flush=True)
        base = f"https://127.0.0.1:{gw.port}"
        floor_fig = load(f"https://127.0.0.1:{port}/", ca, gateway=False)
        line("floor: bare axum + rustls", floor_fig, floor_fig)
        auth = ["--header", f"Authorization: Bearer {token}"]
        line("GET /sessions/{id}/state, JWT", load(base + state_path, ca, *auth), floor_fig)
        line("GET /sessions/{id}/state, client certificate",
             load(base + state_path, ca, "--cert", client_cert, "--key", client_key), floor_fig)
        line("GET /version, JWT", load(base + "/version", ca, *auth), floor_fig)
        line("GET /version, no credentials (401)", load(base + "/version", ca), floor_fig, expect="401")
        many = int(os.environ.get("BENCH_MANY_CONNECTIONS", "1000"))
        floor_many = load(f"https://127.0.0.1:{port}/", ca, connections=many, gateway=False)
        line(f"floor, {many} connections", floor_many, floor_many)
        line(f"GET /sessions/{{id}}/state, JWT, {many} connections",
             load(base + state_path, ca, *auth, connections=many), floor_many)
        # Polling, not flooding: every connection asks again 100 ms after each answer.
        floor_poll = load(f"https://127.0.0.1:{port}/", ca, "--pause-ms", "100", connections=many, gateway=False)
        line(f"floor, {many} connections polling every 100 ms", floor_poll, floor_poll)
        line(f"GET /sessions/{{id}}/state, JWT, {many} connections polling every 100 ms",
             load(base + state_path, ca, *auth, "--pause-ms", "100", connections=many), floor_poll)
        time.sleep(2)
        print(f"gateway RSS (one idle session): {rss_start:.1f} MiB at start, {rss_burst:.1f} MiB idle after "
              f"{burst['answered']} requests, {rss_mib(gw.pid):.1f} MiB idle after {ANSWERED[0] + burst['answered']} "
              f"requests and {many} connections", flush=True)
        gw.call("DELETE", f"/sessions/{sid}")
        gw.stop()
        audit_figures(data, ANSWERED[0])
    finally:
        if floor:
            floor.kill()
        gw.stop()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
