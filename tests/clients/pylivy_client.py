"""Drives a sparkgate with pylivy (the `livy` package on PyPI), unchanged, the way its users do.

Run by tests/it/clients.rs with:
  SPARKGATE_URL      the gateway's base URL (https)
  SPARKGATE_CA       the PEM file of the CA that signed the gateway's certificate
  SPARKGATE_TOKEN    a bearer token for a user who may act for ACT_AS
  SPARKGATE_ACT_AS   the proxyUser the session and the batch are created for
  SPARKGATE_JOB      a pyspark batch file the gateway accepts

Every check raises with what was wrong; on success the last line of stdout is a JSON summary
that the Rust test checks again.
"""
import json
import os
import sys

import pandas
import requests
from livy import LivyBatch, LivySession, SessionKind, SessionState
from livy.client import LivyClient
from livy.models import SparkRuntimeError


class BearerAuth(requests.auth.AuthBase):
    def __init__(self, token):
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = "Bearer " + self.token
        return request


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def main():
    url, ca = os.environ["SPARKGATE_URL"], os.environ["SPARKGATE_CA"]
    auth, act_as = BearerAuth(os.environ["SPARKGATE_TOKEN"]), os.environ["SPARKGATE_ACT_AS"]
    summary = {}

    client = LivyClient(url, auth=auth, verify=ca)
    summary["version"] = repr(client.server_version())
    check(not client.legacy_server(), "pylivy must see a post-0.5 server: %s" % summary["version"])
    client.close()

    with LivySession.create(url, auth=auth, verify=ca, kind=SessionKind.PYSPARK, proxy_user=act_as,
                            name="pylivy", spark_conf={"spark.sql.shuffle.partitions": "2"},
                            echo=False) as session:
        # __enter__ waited for the session to be idle.
        summary["state"] = session.state.value
        summary["sum"] = session.run("print(sum(range(10)))").text
        summary["spark_user"] = session.run("print(sc.sparkUser())").text
        session.run("df = spark.range(4).selectExpr('id AS n', 'id * id AS square')")
        downloaded = session.download("df")
        summary["downloaded"] = downloaded.to_dict(orient="list")
        session.upload("uploaded", pandas.DataFrame({"word": ["a", "b", "c"], "count": [1, 2, 3]}))
        summary["uploaded_total"] = session.run("print(uploaded.groupBy().sum('count').first()[0])").text
        try:
            session.run("1 / 0")
            raise AssertionError("a failing statement did not raise")
        except SparkRuntimeError as e:
            summary["error"] = {"ename": e.ename, "evalue": e.evalue}
        # The session carries on after an error.
        summary["after_error"] = session.run("print('still here')").text
        listed = LivyClient(url, auth=auth, verify=ca).list_sessions()
        summary["listed"] = [{"id": s.session_id, "proxy_user": s.proxy_user, "kind": s.kind.value}
                             for s in listed]
        session_id = session.session_id
    # __exit__ deleted it.
    summary["after_close"] = LivyClient(url, auth=auth, verify=ca).get_session(session_id)

    batch = LivyBatch.create(url, file=os.environ["SPARKGATE_JOB"], args=["21"], proxy_user=act_as,
                             name="pylivy-batch", auth=auth, verify=ca)
    summary["batch_state"] = batch.wait().value
    summary["batch_log"] = batch.log()
    summary["batch_id"] = batch.batch_id
    check(summary["batch_state"] == SessionState.SUCCESS.value, "batch ended %s" % summary["batch_state"])

    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    sys.exit(main())
