"""What the benchmarks share: a release-build gateway started on a free loopback port in the
development-only anonymous mode, with a temporary data directory and a policy that lets
`anonymous` create sessions and batches, and a small HTTPS client for it."""
import http.client, json, os, socket, ssl, subprocess, time, urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


class Gateway:
    """`sparkgate serve` in `work`, with `sets` (`section.key=value`) on top of the bench defaults."""

    def __init__(self, work, sets=(), data=None, users=("anonymous",), headers=None, admins=()):
        self.port = free_port()
        self.headers = dict(headers or {})
        self.work = work
        data = data or os.path.join(work, f"data-{self.port}")
        self.data = data
        policies = os.path.join(work, "policies")
        os.makedirs(policies, exist_ok=True)
        with open(os.path.join(policies, "acl.toml"), "w") as f:
            f.write(f'[create]\nusers = {json.dumps(list(users))}\n')
            if admins:
                f.write(f'[admin]\nusers = {json.dumps(list(admins))}\n')
            f.write('[quotas]\n')
            for user in users:
                f.write(f'users.{user} = {{ max_sessions = 100, max_concurrent_launches = 100 }}\n')
        args = [os.path.join(REPO, "target", "release", "sparkgate"), "serve"]
        defaults = [f'server.bind="127.0.0.1:{self.port}"', f'server.data_dir="{data}"',
                    "auth.dangerous_allow_anonymous=true", "auth.methods=[]", f'spark.venv="{REPO}/.venv"',
                    f'acl.policy_dir="{policies}"',
                    # Benchmarks stop their gateways with SIGTERM: nothing is to outlive them
                    # unless a benchmark of recovery asks (later settings win).
                    "recovery.enabled=false"]
        # The gateway refuses to run as root unless told (server.dangerous_run_as_root).
        if os.geteuid() == 0:
            defaults.append("server.dangerous_run_as_root=true")
        for s in defaults + list(sets):
            args += ["--set", s]
        self.log = os.path.join(work, f"gateway-{self.port}.log")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        ca = os.path.join(data, "tls", "dev-ca.pem")
        for _ in range(600):  # the gateway writes its dev CA on first start
            if os.path.exists(ca) or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        if self.proc.poll() is not None:
            raise SystemExit("the gateway exited; see " + self.log)
        self.ctx = ssl.create_default_context(cafile=ca)
        for _ in range(600):
            try:
                self.call("GET", "/version")
                return
            except Exception:
                time.sleep(0.1)
        raise SystemExit("the gateway did not answer; see " + self.log)

    @property
    def pid(self):
        return self.proc.pid

    def raw(self, method, path, body=None):
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **self.headers})
        with urllib.request.urlopen(req, context=self.ctx, timeout=600) as r:
            return r.read()

    def call(self, method, path, body=None):
        return json.loads(self.raw(method, path, body) or b"null")

    def keep_alive(self):
        """A client that keeps one HTTPS connection open, as notebooks and SDKs do."""
        return KeepAlive(self)

    def wait_state(self, sid, want, limit=300):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            st = self.call("GET", f"/sessions/{sid}/state")["state"]
            if st in want:
                return st
            if st in ("dead", "error", "killed"):
                raise SystemExit(f"session {sid} ended {st}; see {self.log}")
            time.sleep(0.02)
        raise SystemExit(f"session {sid} not {want} in {limit}s")

    def kill9(self):
        self.proc.kill()
        self.proc.wait(timeout=60)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


class KeepAlive:
    """One kept-alive HTTPS/1.1 connection to a gateway: `call` as `Gateway.call`."""

    def __init__(self, gw):
        self.gw = gw
        self.conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=gw.ctx, timeout=600)

    def call(self, method, path, body=None):
        headers = {"Content-Type": "application/json", **self.gw.headers}
        self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        if r.status >= 400:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:200]!r}")
        return json.loads(data or b"null")

    def close(self):
        self.conn.close()
