"""Does on the wire what Livy's Python client (livy-python-api's HttpClient and JobHandle) does
with jobs: cloudpickles a function, sends it base64-encoded to `submit-job` with
`jobType: pyspark`, polls `jobs/{id}` (growing intervals), cancels through `jobs/{id}/cancel`,
and takes a result apart as that client does (base64, base64 again, cloudpickle).

Run by tests/it/jobs.rs with:
  SPARKGATE_URL      the gateway's base URL (https)
  SPARKGATE_CA       the PEM file of the CA that signed the gateway's certificate
  SPARKGATE_SESSION  the id of an idle pyspark or shared session
  SPARKGATE_TOKEN    a bearer token (optional: the gateway may be anonymous)

The last line of stdout is a JSON summary that the Rust test checks.
"""
import base64
import json
import os
import sys
import time

import cloudpickle
import requests

URL, CA, SESSION = os.environ["SPARKGATE_URL"], os.environ["SPARKGATE_CA"], os.environ["SPARKGATE_SESSION"]
HEADERS = {"Content-Type": "application/json", "X-Requested-By": "livy"}
if os.environ.get("SPARKGATE_TOKEN"):
    HEADERS["Authorization"] = "Bearer " + os.environ["SPARKGATE_TOKEN"]
HTTP = requests.Session()


def call(method, path, body=None):
    response = HTTP.request(method, "%s/sessions/%s%s" % (URL, SESSION, path), headers=HEADERS,
                            data=None if body is None else json.dumps(body), verify=CA, timeout=120)
    if response.status_code // 100 != 2:
        raise RuntimeError("%s %s: %d %s" % (method, path, response.status_code, response.text))
    return response.json()


def submit(job, command="submit-job"):
    """What HttpClient.submit does: cloudpickle, base64, POST; the answer names the job."""
    pickled = base64.b64encode(cloudpickle.dumps(job)).decode("utf-8")
    return call("POST", "/" + command, {"job": pickled, "jobType": "pyspark"})


def poll(job_id, limit=240):
    """What JobHandle does: poll at growing intervals until the job ends."""
    interval, deadline = 0.1, time.monotonic() + limit
    while time.monotonic() < deadline:
        status = call("GET", "/jobs/%d" % job_id)
        if status["state"] not in ("SENT", "QUEUED", "STARTED"):
            return status
        time.sleep(interval)
        interval = min(interval * 2, 1.0)
    raise RuntimeError("job %d did not end in %d s" % (job_id, limit))


def result_of(status):
    return cloudpickle.loads(base64.b64decode(base64.b64decode(status["result"])))


def wait_started(job_id, limit=120):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = call("GET", "/jobs/%d" % job_id)
        if status["state"] != "QUEUED":
            return status
        time.sleep(0.05)
    raise RuntimeError("job %d did not start" % job_id)


def main():
    summary = {}

    # The job, through submit-job.
    sent = submit(lambda ctx: ctx.sc.parallelize(range(100)).sum())
    summary["submitted"] = sorted(sent)
    summary["submitted_state"] = sent["state"]
    done = poll(sent["id"])
    summary["sum"] = {"state": done["state"], "value": result_of(done), "error": done["error"]}

    # run-job, a closure over local state and a class defined here (pickled by value), and the
    # contexts Livy's JobContext offers.
    offset = 7

    class Point:
        def __init__(self, x):
            self.x = x

    def contexts(ctx):
        rows = ctx.spark.range(3).count()
        sql_rows = ctx.sql_ctx.sql("SELECT 1 AS one").collect()[0].one
        return {"rows": rows + offset, "sql": sql_rows, "same_session": ctx.spark_session is ctx.spark,
                "user": ctx.sc.sparkUser(), "point": Point(ctx.sc.parallelize([1, 2]).count()),
                "tmp": os.path.isdir(ctx.local_tmp_dir_path)}

    ran = poll(submit(contexts, "run-job")["id"])
    value = result_of(ran) if ran["state"] == "SUCCEEDED" else {}
    summary["contexts"] = {"state": ran["state"], "error": ran["error"],
                           "rows": value.get("rows"), "sql": value.get("sql"),
                           "same_session": value.get("same_session"), "tmp": value.get("tmp"),
                           "point_x": getattr(value.get("point"), "x", None)}

    def interrupted(ctx):
        raise KeyboardInterrupt()

    # A job that raises: FAILED, the error text names it, no result.
    def fails(ctx):
        raise ValueError("no such table: sales_2031")

    failed = poll(submit(fails)["id"])
    summary["failed"] = {"state": failed["state"], "error": failed["error"], "result": failed["result"]}

    # Jobs that raise SystemExit or KeyboardInterrupt fail like any other; the session lives on.
    summary["exits"] = [poll(submit(job)["id"])["state"] for job in (lambda ctx: sys.exit(3), interrupted)]
    summary["after_exits"] = poll(submit(lambda ctx: 7)["id"])["state"]

    # A long job (a Spark job that would run ten minutes), cancelled as JobHandle.cancel does.
    def slow(ctx):
        return ctx.sc.parallelize(range(2), 2).map(lambda x: time.sleep(600) or x).count()

    long_job = submit(slow)["id"]
    wait_started(long_job)
    time.sleep(1.0)
    t0 = time.monotonic()
    call("POST", "/jobs/%d/cancel" % long_job)
    cancelled = poll(long_job)
    summary["cancelled"] = {"state": cancelled["state"], "seconds": time.monotonic() - t0}

    # Statements and jobs interleave in one FIFO: each records when it ran.
    marks = []
    first = call("POST", "/statements", {"kind": "pyspark", "code": "import time\ntime.sleep(1.5)\ntime.time()"})
    middle = submit(lambda ctx: __import__("time").time())
    last = call("POST", "/statements", {"kind": "pyspark", "code": "time.time()"})
    states_at_submit = [call("GET", "/statements/%d" % first["id"])["state"],
                        call("GET", "/jobs/%d" % middle["id"])["state"]]
    job_done = poll(middle["id"])
    for sid in (first["id"], last["id"]):
        deadline = time.monotonic() + 120
        while True:
            st = call("GET", "/statements/%d" % sid)
            if st["state"] == "available" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        marks.append(float(st["output"]["data"]["text/plain"]))
    summary["fifo"] = {"ids": [first["id"], middle["id"], last["id"]], "states_at_submit": states_at_submit,
                       "times": [marks[0], result_of(job_done), marks[1]]}
    # A job id is not a statement id, nor the other way round.
    summary["job_as_statement"] = HTTP.get("%s/sessions/%s/statements/%d" % (URL, SESSION, middle["id"]),
                                           headers=HEADERS, verify=CA).status_code
    summary["statement_as_job"] = HTTP.get("%s/sessions/%s/jobs/%d" % (URL, SESSION, first["id"]),
                                           headers=HEADERS, verify=CA).status_code
    listed = call("GET", "/statements")["statements"]
    summary["listed_ids"] = [st["id"] for st in listed]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
