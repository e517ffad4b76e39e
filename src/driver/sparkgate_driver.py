#!/usr/bin/env python3
"""sparkgate driver: the program spark-submit runs for every interactive session.

It owns one SparkSession, dials the gateway over TLS, authenticates with the
per-session secret (docs/driver-protocol.md) and then runs statements for the
gateway: Python (a Livy ``fake_shell`` look-alike), Scala (the Scala 2.13 REPL
driven through py4j) and SQL, all sharing that SparkSession.

Threads:
  * main      -- starts Spark, then runs statements one at a time (so SIGINT
                 can interrupt user Python code);
  * link      -- dials, handshakes and reads frames; redials when dropped;
  * progress  -- turns the job group's task counts into statement_update;
  * control   -- completion and add_file requests (never blocks the reader);
  * watchdog  -- exits when the JVM that started us goes away;
  * short-lived threads for cancel and shutdown.

Only the Python standard library and pyspark/py4j are used.
"""

import ast
import base64
import builtins
import datetime
import decimal
import hashlib
import hmac
import importlib.util
import io
import json
import logging
import math
import os
import queue
import re
import rlcompleter
import secrets
import select
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict

PROTOCOL_VERSION = 1
LOG_PREFIX = "sparkgate-driver: "

# Exit codes (the gateway only needs 0 = asked to stop, 3 = gave up redialling).
EXIT_OK = 0
EXIT_BAD_CONF = 2
EXIT_RECONNECT_WINDOW = 3
EXIT_JVM_GONE = 4

HANDSHAKE_TIMEOUT_SECS = 15.0
DIAL_TIMEOUT_SECS = 10.0
SEND_TIMEOUT_SECS = 60.0
BACKOFF_START_SECS = 0.2
BACKOFF_MAX_SECS = 2.0
PROGRESS_INTERVAL_SECS = 0.25
CANCEL_RETRY_INTERVAL_SECS = 0.1
# After a statement was cancelled, its job group is watched this long: a job that reached the
# scheduler only after the cancel (the Python side was interrupted while the JVM was still
# submitting it) is cancelled as soon as it shows up instead of holding the cores.
CANCELLED_GROUP_WATCH_SECS = 60.0
CANCEL_FORCE_TIMEOUT_SECS = 30.0
MAX_COMPLETIONS = 1000
SCALA_SIGNAL_AFTER_SECS = 1.0   # give an interrupted REPL thread this long before abandoning it
ABANDONED_GRACE_SECS = 2.0
MAX_ERROR_MESSAGE_CHARS = 4000

# User code may replace sys.stdout/sys.stderr; diagnostics always go to the real stderr.
_REAL_STDERR = sys.__stderr__


def log(message):
    """One diagnostic line on stderr (never pass the secret here)."""
    try:
        _REAL_STDERR.write(LOG_PREFIX + str(message) + "\n")
        _REAL_STDERR.flush()
    except Exception:
        pass


def hard_exit(code):
    """Leave now: py4j and Spark keep non-daemon threads that would block a normal exit."""
    log("exiting with status %d" % code)
    try:
        _REAL_STDERR.flush()
        sys.__stdout__.flush()
    except Exception:
        pass
    os._exit(code)


def short(text, limit=MAX_ERROR_MESSAGE_CHARS):
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

class ConfError(Exception):
    pass


class DriverConf:
    """The JSON file named by SPARKGATE_DRIVER_CONF (see the protocol doc)."""

    _FIELDS = {
        "session_id": int,
        "rpc_host": str,
        "rpc_port": int,
        "rpc_server_name": str,
        "ca_pem": str,
        "secret": str,
        "kind": str,
        "sql_max_rows": int,
        "reconnect_window_secs": int,
        "max_frame_bytes": int,
        "repl_class_dir": str,
        # How long a completion may wait for a running statement or the REPL's start-up;
        # the gateway sends a little less than its own completion timeout.
        "completion_wait_secs": int,
    }

    def __init__(self, raw):
        for name, typ in self._FIELDS.items():
            value = raw.get(name)
            # bool is an int subclass; a bool is never a valid value here.
            if not isinstance(value, typ) or isinstance(value, bool):
                raise ConfError("field %r is missing or not a %s" % (name, typ.__name__))
            setattr(self, name, value)
        if not re.fullmatch(r"[0-9a-fA-F]{64}", self.secret):
            raise ConfError("field 'secret' must be 64 hex characters")
        # Keep only the raw key bytes; the hex string is not needed again.
        self.secret_key = bytes.fromhex(self.secret)
        self.secret = None
        if self.max_frame_bytes < 1024:
            raise ConfError("field 'max_frame_bytes' is too small")
        if self.sql_max_rows < 0 or self.reconnect_window_secs < 0 or self.completion_wait_secs < 0:
            raise ConfError("negative limits are not allowed")
        # Optional: the session's own Unix socket (local and client deploy mode). When given,
        # the driver dials it instead of rpc_host:rpc_port, also on every reconnect.
        unix_path = raw.get("rpc_unix_path")
        if unix_path is not None and (not isinstance(unix_path, str) or not unix_path):
            raise ConfError("field 'rpc_unix_path' must be a non-empty string when present")
        self.rpc_unix_path = unix_path
        # Optional: the jar of the JVM side of Livy's job API (a copy in the session's dir).
        job_api_jar = raw.get("job_api_jar")
        if job_api_jar is not None and (not isinstance(job_api_jar, str) or not job_api_jar):
            raise ConfError("field 'job_api_jar' must be a non-empty string when present")
        self.job_api_jar = job_api_jar

    def rpc_target(self):
        """Where the driver dials, for log lines."""
        if self.rpc_unix_path:
            return self.rpc_unix_path
        return "%s:%d" % (self.rpc_host, self.rpc_port)

    @classmethod
    def load_and_delete(cls):
        # Kubernetes: the configuration itself, in the pod's environment (never uploaded as a
        # file); taken out of the environment at once so nothing started later inherits it.
        inline = os.environ.pop("SPARKGATE_DRIVER_SECRET_CONF", None)
        if inline is not None:
            try:
                raw = json.loads(inline)
            except ValueError:
                raise ConfError("SPARKGATE_DRIVER_SECRET_CONF is not JSON")
            if not isinstance(raw, dict):
                raise ConfError("SPARKGATE_DRIVER_SECRET_CONF is not a JSON object")
            return cls(raw)
        path = os.environ.get("SPARKGATE_DRIVER_CONF")
        if not path:
            raise ConfError("SPARKGATE_DRIVER_CONF is not set")
        try:
            with open(path, "r", encoding="utf-8") as f:
                raw = json.load(f)
        finally:
            # The file holds the secret: remove it even if it was unreadable.
            try:
                os.unlink(path)
            except OSError as e:
                log("could not delete the conf file: %s" % e.strerror)
        if not isinstance(raw, dict):
            raise ConfError("the conf file is not a JSON object")
        return cls(raw)


# ---------------------------------------------------------------------------
# Livy output objects
# ---------------------------------------------------------------------------

def ok_body(data):
    return {"status": "ok", "data": data}


def error_body(ename, evalue, traceback_lines=None):
    return {"status": "error", "ename": str(ename), "evalue": str(evalue),
            "traceback": list(traceback_lines or [])}


def livy_output(sid, body):
    """Livy's key order: status, execution_count (= statement id), then the rest."""
    out = OrderedDict()
    out["status"] = body["status"]
    out["execution_count"] = sid
    for key, value in body.items():
        if key != "status":
            out[key] = value
    return out


def interrupt_jvm(target, what):
    """Interrupts a JVM thread (or a job runner) through py4j; True if there was one to
    interrupt."""
    if target is None:
        return False
    try:
        target.interrupt()
        return True
    except Exception as e:
        log("could not interrupt %s: %s" % (what, short(e, 200)))
        return False


def cancelled_body():
    return error_body("Cancelled", "Statement cancelled", [])


def json_safe(value):
    """Replace non-finite floats (invalid JSON) by their names, recursively."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def encode_json(msg):
    try:
        text = json.dumps(msg, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(json_safe(msg), ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False)
    return text.encode("utf-8")


# ---------------------------------------------------------------------------
# Cancellation
# ---------------------------------------------------------------------------

class StatementCancelled(KeyboardInterrupt):
    """Raised in the main thread by our SIGINT handler when a statement is cancelled.

    It derives from KeyboardInterrupt on purpose: user code's ``except Exception``
    does not swallow it, and py4j closes a connection whose reply it abandoned on
    a KeyboardInterrupt (so the next JVM call cannot read a stale answer).
    """


# ---------------------------------------------------------------------------
# Python interpreter (Livy fake_shell semantics)
# ---------------------------------------------------------------------------

_TOP_FRAME_REGEX = re.compile(r'\s*File "<stdin>".*in <module>')


class _CaptureIO(io.StringIO):
    """stdout/stderr replacement that also accepts bytes (like Livy's)."""

    def write(self, s):
        if isinstance(s, (bytes, bytearray)):
            s = bytes(s).decode("utf-8", "replace")
        return super().write(s)


class UnknownMagic(Exception):
    pass


def format_python_error(exc_type, exc_value, tb):
    """Livy's traceback: drop everything up to and including the top <stdin> frame."""
    lines = traceback.format_exception(exc_type, exc_value, tb, chain=False)
    for i, line in enumerate(lines):
        if _TOP_FRAME_REGEX.match(line):
            lines = lines[:1] + lines[i + 1:]
            break
    return error_body(exc_type.__name__, str(exc_value), lines)


class _NormalNode:
    def __init__(self, code):
        # dont_inherit=1 so the driver's own compiler flags never leak into user code.
        self.tree = compile(code, "<stdin>", "exec", ast.PyCF_ONLY_AST, 1)

    def execute(self, shell):
        body = self.tree.body
        for node in body[:-1]:
            exec(compile(ast.Module([node], []), "<stdin>", "exec"), shell.ns)
        for node in body[-1:]:
            # 'single' mode prints the repr of a trailing expression via sys.displayhook,
            # exactly like the interactive shell (and Livy) do.
            exec(compile(ast.Interactive([node]), "<stdin>", "single"), shell.ns)
        return None


class _MagicNode:
    def __init__(self, line):
        parts = line[1:].split(" ", 1)
        self.magic = parts[0]
        self.rest = parts[1] if len(parts) > 1 else None

    def execute(self, shell):
        if not self.magic:
            raise UnknownMagic("magic command not specified")
        handler = shell.magics.get(self.magic)
        if handler is None:
            raise UnknownMagic("unknown magic command '%s'" % self.magic)
        return handler(self.rest)


class _MagicError(Exception):
    """Carries a ready Livy error body out of a magic handler."""

    def __init__(self, body):
        super().__init__(body["evalue"])
        self.body = body


def _exc_body(exc):
    return format_python_error(type(exc), exc, None)


def _table_convert(value):
    converter = _TABLE_TYPES.get(type(value), _TABLE_TYPES[str])
    return converter(value)


def _table_convert_seq(items):
    last_type = None
    converted = []
    for item in items:
        item_type, item = _table_convert(item)
        if last_type is None:
            last_type = item_type
        elif last_type != item_type:
            raise ValueError("value has inconsistent types")
        converted.append(item)
    return "ARRAY_TYPE", converted


def _table_convert_map(mapping):
    last_key_type = last_value_type = None
    converted = {}
    for key, value in mapping.items():
        key_type, key = _table_convert(key)
        value_type, value = _table_convert(value)
        if last_key_type is None:
            last_key_type = key_type
        elif last_key_type != key_type:
            raise ValueError("value has inconsistent types")
        if last_value_type is None:
            last_value_type = value_type
        elif last_value_type != value_type:
            raise ValueError("value has inconsistent types")
        converted[key] = value
    return "MAP_TYPE", converted


# Same mapping as Livy's fake_shell (Python 3: int is INT_TYPE).
_TABLE_TYPES = {
    type(None): lambda x: ("NULL_TYPE", x),
    bool: lambda x: ("BOOLEAN_TYPE", x),
    int: lambda x: ("INT_TYPE", x),
    float: lambda x: ("DOUBLE_TYPE", x),
    str: lambda x: ("STRING_TYPE", str(x)),
    datetime.date: lambda x: ("DATE_TYPE", str(x)),
    datetime.datetime: lambda x: ("TIMESTAMP_TYPE", str(x)),
    decimal.Decimal: lambda x: ("DECIMAL_TYPE", str(x)),
    tuple: _table_convert_seq,
    list: _table_convert_seq,
    dict: _table_convert_map,
}


class PythonInterpreter:
    def __init__(self, spark, sc):
        self.ns = {"__name__": "__main__", "__builtins__": builtins, "spark": spark, "sc": sc}
        self.magics = {"json": self._magic_json, "table": self._magic_table,
                       "matplot": self._magic_matplot}

    # -- parsing ----------------------------------------------------------

    @staticmethod
    def _parse(code):
        """Whole code first; only if that fails split out '%' magic lines (as Livy does)."""
        try:
            return [_NormalNode(code)]
        except SyntaxError:
            pass
        chunks, normal = [], []
        for line in code.rstrip().split("\n"):
            if line.startswith("%"):
                if normal:
                    chunks.append("\n".join(normal))
                    normal = []
                chunks.append(line)
            else:
                normal.append(line)
        if normal:
            chunks.append("\n".join(normal))
        return [_MagicNode(c) if c.startswith("%") else _NormalNode(c) for c in chunks]

    # -- execution --------------------------------------------------------

    def execute(self, code):
        out, err = _CaptureIO(), _CaptureIO()
        saved = (sys.stdout, sys.stderr, sys.stdin)
        sys.stdout, sys.stderr, sys.stdin = out, err, io.StringIO()
        try:
            try:
                nodes = self._parse(code)
            except SyntaxError as e:
                return format_python_error(type(e), e, None)
            result = None
            try:
                for node in nodes:
                    result = node.execute(self)
            except StatementCancelled:
                raise
            except UnknownMagic as e:
                return _exc_body(e)
            except _MagicError as e:
                return e.body
            except BaseException as e:  # SystemExit, user KeyboardInterrupt, ... are errors too
                return format_python_error(type(e), e, e.__traceback__)
            data = dict(result or {})
            magic_text = "text/plain" in data
            text = data.pop("text/plain", "") + out.getvalue() + err.getvalue()
            text = text.rstrip()
            # Like Livy: text/plain only if there is text or no other mime type
            # (or a magic asked for it: %matplot answers {"image/png": ..., "text/plain": ""}).
            if text or not data or magic_text:
                data["text/plain"] = text
            return ok_body(data)
        finally:
            sys.stdout, sys.stderr, sys.stdin = saved

    # -- magics -----------------------------------------------------------

    def _magic_value(self, rest):
        expr = (rest or "").strip()
        if not expr:
            raise _MagicError(error_body("ValueError", "the magic needs a variable name", []))
        if expr.isidentifier():
            if expr not in self.ns:
                raise _MagicError(_exc_body(KeyError(expr)))
            return self.ns[expr]
        # Not a plain name: accept any expression (a superset of Livy, which only takes names).
        try:
            return eval(compile(expr, "<stdin>", "eval", 0, 1), self.ns)
        except StatementCancelled:
            raise
        except Exception as e:
            raise _MagicError(format_python_error(type(e), e, e.__traceback__))

    def _magic_json(self, rest):
        value = self._magic_value(rest)
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, OverflowError, RecursionError):
            message = short("cannot json-ify %r" % (value,), 500)
            raise _MagicError(error_body("ValueError", message, []))
        return {"application/json": value}

    def _magic_table(self, rest):
        value = self._magic_value(rest)
        if not isinstance(value, (list, tuple)):
            value = [value]
        headers, data = {}, []
        try:
            for row in value:
                cols = []
                data.append(cols)
                if row.__class__.__name__ == "Row":
                    row = row.asDict()
                if not isinstance(row, (list, tuple, dict)):
                    row = [row]
                items = enumerate(row) if isinstance(row, (list, tuple)) else sorted(row.items())
                for name, col in items:
                    col_type, col = _table_convert(col)
                    header = headers.get(name)
                    if header is None:
                        headers[name] = {"name": str(name), "type": col_type}
                    elif col_type != "NULL_TYPE" and header["type"] != col_type:
                        # NULL columns take the first real type; other mismatches are errors.
                        if header["type"] == "NULL_TYPE":
                            header["type"] = col_type
                        else:
                            raise _MagicError(error_body(
                                "Exception", "table rows have different types",
                                ["Exception: table rows have different types\n"]))
                    cols.append(col)
            ordered = [headers[k] for k in sorted(headers, key=lambda k: (str(type(k)), k))]
        except (_MagicError, StatementCancelled):
            raise
        except Exception as e:
            raise _MagicError(_exc_body(e))
        return {"application/vnd.livy.table.v1+json": {"headers": ordered, "data": data}}

    def _magic_matplot(self, rest):
        if importlib.util.find_spec("matplotlib") is None:
            raise _MagicError(error_body(
                "ImportError",
                "matplotlib is not installed on the driver host; %matplot needs it",
                ["ImportError: matplotlib is not installed on the driver host\n"]))
        value = self._magic_value(rest)
        try:
            fig = value.gcf()
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            encoded = base64.b64encode(buf.getvalue()).decode("ascii")
        except StatementCancelled:
            raise
        except Exception as e:
            raise _MagicError(_exc_body(e))
        return {"image/png": encoded, "text/plain": ""}

    # -- completion -------------------------------------------------------

    def complete(self, code, cursor):
        cursor = max(0, min(int(cursor), len(code)))
        token = re.search(r"[\w.]*$", code[:cursor]).group(0)
        if not token:
            return []
        completer = rlcompleter.Completer(self.ns)
        seen, out = set(), []
        state = 0
        while len(out) < MAX_COMPLETIONS:
            try:
                match = completer.complete(token, state)
            except Exception:
                break
            if match is None:
                break
            state += 1
            # Bare names like the Scala completer gives ("parallelize", not "sc.parallelize(").
            name = match.rstrip("(: ").rsplit(".", 1)[-1]
            if name and name not in seen:
                seen.add(name)
                out.append(name)
        return out


# ---------------------------------------------------------------------------
# SQL interpreter
# ---------------------------------------------------------------------------

def _java_error_parts(exc):
    """(message, stack frames) of a JVM-side error, like Livy's SQL interpreter reports."""
    message, stack = None, None
    desc = getattr(exc, "_desc", None)
    if desc is not None:  # pyspark CapturedException (AnalysisException, ...)
        message, stack = desc, getattr(exc, "_stackTrace", None)
    else:
        jexc = getattr(exc, "java_exception", None)  # raw Py4JJavaError
        if jexc is not None:
            try:
                message = jexc.getMessage()
                from pyspark import SparkContext
                utils = getattr(SparkContext._jvm, "org.apache.spark.util.Utils")
                stack = utils.exceptionString(jexc)
            except Exception:
                pass
    if message is None:
        return str(exc), traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False)
    frames = []
    for line in (stack or "").splitlines():
        if line.startswith("Caused by"):
            break
        if line.startswith("\tat "):
            frames.append(line[4:])
    return message, frames


def describe_error(exc):
    """'Type: message' for logs and replies; JVM errors without their (long) stack trace."""
    jexc = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    if jexc is not None:
        try:
            parts = [jexc.toString()]
            cause = jexc.getCause()
            while cause is not None and len(parts) < 4:  # the root cause is often the useful bit
                parts.append(cause.toString())
                cause = cause.getCause()
            return short("; caused by: ".join(parts), 2000)
        except Exception:
            pass
    return short("%s: %s" % (type(exc).__name__, exc), 2000)


def _sql_value(value):
    """One result cell as JSON, mirroring what Livy's json4s encoding produces."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return json_safe(value)
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and value.as_tuple().exponent >= 0:
            return int(value)  # an integral decimal such as decimal(10,0)
        return json_safe(float(value))
    if isinstance(value, datetime.datetime):
        # json4s DefaultFormats: UTC, millisecond precision, 'Z' suffix.
        aware = value if value.tzinfo is not None else value.astimezone()
        utc = aware.astimezone(datetime.timezone.utc)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (utc.microsecond // 1000)
    if isinstance(value, datetime.date):
        return str(value)  # LIVY-683: dates are plain strings
    if isinstance(value, (bytes, bytearray)):
        return list(bytes(value))  # json4s encodes Array[Byte] as numbers
    if hasattr(value, "asDict") and isinstance(value, tuple):  # a struct (Row)
        return {k: _sql_value(v) for k, v in value.asDict().items()}
    if isinstance(value, (list, tuple)):
        return [_sql_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _sql_value(v) for k, v in value.items()}
    return str(value)


class SqlInterpreter:
    def __init__(self, spark, max_rows):
        self.spark = spark
        self.max_rows = max_rows

    def execute(self, code):
        try:
            df = self.spark.sql(code)
            schema = json.loads(df.schema.json())
            rows = df.take(self.max_rows) if self.max_rows > 0 else []
            data = [[_sql_value(v) for v in row] for row in rows]
            return ok_body({"application/json": {"schema": schema, "data": data}})
        except StatementCancelled:
            raise
        except Exception as e:
            message, frames = _java_error_parts(e)
            return error_body("Error", message, frames)

    @staticmethod
    def complete(code, cursor):
        return []


# ---------------------------------------------------------------------------
# Scala interpreter (Scala 2.13 IMain through py4j)
# ---------------------------------------------------------------------------

_SCALA_MAGIC = re.compile(r"%(\w+)\W*(.*)")
_KEEP_NEWLINE_SPLIT = re.compile(r"(?<=\n)")


class ScalaStartError(Exception):
    pass


class ScalaInterpreter:
    """The Scala REPL over the session's SparkContext, created on first use."""

    def __init__(self, spark, sc, repl_class_dir, completion_wait_secs):
        self.spark = spark
        self.sc = sc
        self.jvm = sc._jvm
        self.repl_class_dir = repl_class_dir
        self.completion_wait_secs = completion_wait_secs
        # IMain is not thread safe: statements, completion and addJar take this lock.
        self.lock = threading.RLock()
        self.intp = None
        self.start_error = None
        self.pending_jars = []
        self.exec_thread = None      # JVM thread running the current statement
        self.abandoned_thread = None  # JVM thread still running a cancelled statement
        self.starting_async = False

    # -- start-up ---------------------------------------------------------

    def _scala_list(self, items):
        jlist = self.jvm.java.util.ArrayList()
        for item in items:
            jlist.add(item)
        return self.jvm.scala.jdk.javaapi.CollectionConverters.asScala(jlist).toList()

    def ensure_started(self):
        with self.lock:
            if self.intp is not None:
                return
            if self.start_error is not None:
                raise ScalaStartError(self.start_error)
            started = time.monotonic()
            try:
                self._start()
            except StatementCancelled:
                raise
            except Exception as e:
                self.start_error = describe_error(e)
                raise ScalaStartError(self.start_error)
            log("Scala interpreter started in %.1f s" % (time.monotonic() - started))

    def start_async(self):
        """Build the REPL in the background (it takes several seconds)."""
        with self.lock:
            if self.intp is not None or self.start_error is not None or self.starting_async:
                return
            self.starting_async = True

        def run():
            try:
                self.ensure_started()
            except Exception as e:
                log("Scala interpreter failed to start: %s" % short(e, 300))
        threading.Thread(target=run, name="sparkgate-scala-init", daemon=True).start()

    def _start(self):
        jvm = self.jvm
        os.makedirs(self.repl_class_dir, exist_ok=True)
        settings = jvm.scala.tools.nsc.Settings()
        # Class-based wrappers + our output dir: Spark serves that dir to executors
        # (spark.repl.class.outputDir), so closures defined in the REPL can run there.
        quoted = '"%s"' % self.repl_class_dir.replace("\\", "\\\\").replace('"', '\\"')
        processed = settings.processArgumentString(
            "-usejavacp -Yrepl-class-based -Yrepl-outdir " + quoted)
        if not processed._1():
            raise RuntimeError("the Scala compiler rejected its settings")
        out = jvm.java.io.ByteArrayOutputStream()
        writer = jvm.java.io.PrintWriter(jvm.java.io.OutputStreamWriter(out, "UTF-8"), True)
        stream = jvm.java.io.PrintStream(out, True, "UTF-8")
        reporter = jvm.scala.tools.nsc.interpreter.shell.ReplReporterImpl(settings, writer)
        intp = jvm.scala.tools.nsc.interpreter.IMain(settings, reporter)
        if not intp.initializeCompiler():
            writer.flush()
            raise RuntimeError("the Scala compiler failed to initialise: " + out.toString("UTF-8"))
        self.out, self.writer, self.stream = out, writer, stream

        transient = self._scala_list(["@transient"])
        jspark = self.spark._jsparkSession
        box = jvm.java.util.concurrent.atomic.AtomicReference()
        bindings = [
            ("spark", jspark.getClass().getCanonicalName(), jspark),
            ("sc", "org.apache.spark.SparkContext", self.sc._jsc.sc()),
            ("__sparkgate_box", "java.util.concurrent.atomic.AtomicReference[String]", box),
        ]
        for name, type_name, value in bindings:
            if str(intp.bind(name, type_name, value, transient)) != "Success":
                raise RuntimeError("could not bind %s: %s" % (name, self._read_output(out)))
        for line in ("import org.apache.spark.SparkContext._", "import spark.implicits._",
                     "import spark.sql", "import org.apache.spark.sql.functions._"):
            if str(intp.interpret(line)) != "Success":
                raise RuntimeError("%s failed: %s" % (line, self._read_output(out)))
        self.box = box
        console = jvm.java.lang.Class.forName("scala.Console$")
        module = console.getField("MODULE$").get(None)
        self.console_vars = []
        for field_name in ("outVar", "errVar"):
            field = console.getDeclaredField(field_name)
            field.setAccessible(True)
            self.console_vars.append(field.get(module))
        self.intp = intp
        # Jars from --jars / spark.jars and from add_file before the REPL existed.
        jars = [j for j in self.sc.getConf().get("spark.jars", "").split(",") if j]
        for jar in jars + self.pending_jars:
            try:
                self._add_jar_to_repl(jar)
            except Exception as e:
                log("could not add %s to the Scala REPL: %s" % (jar, describe_error(e)))
        self.pending_jars = []
        self._read_output(out)  # drop the bind/import echo

    @staticmethod
    def _read_output(out):
        text = out.toString("UTF-8")
        out.reset()
        return text

    def _flush_and_read(self):
        self.writer.flush()
        self.stream.flush()
        return self._read_output(self.out)

    # -- execution --------------------------------------------------------

    def execute(self, code):
        with self.lock:
            try:
                self.ensure_started()
            except ScalaStartError as e:
                return error_body("InterpreterError", "Fail to start interpreter", [str(e)])
            self.reap_abandoned()
            jvm = self.jvm
            thread = jvm.java.lang.Thread.currentThread()
            jvm.java.lang.Thread.interrupted()  # clear a flag left by an earlier cancel
            saved_loader = thread.getContextClassLoader()
            # Console.out/err are per-thread (DynamicVariable): point this JVM thread at our buffer.
            for var in self.console_vars:
                getattr(var, "value_$eq")(self.stream)
            self._flush_and_read()
            self.exec_thread = thread
            try:
                return self._execute_lines(code.strip().split("\n"))
            except StatementCancelled:
                # py4j dropped the connection; the JVM thread may still be inside IMain.
                self.abandoned_thread = thread
                raise
            finally:
                self.exec_thread = None
                if self.abandoned_thread is None:
                    try:
                        thread.setContextClassLoader(saved_loader)
                    except Exception:
                        pass

    def reap_abandoned(self, grace=ABANDONED_GRACE_SECS):
        """IMain must not run two requests at once: wait for a cancelled one to unwind.

        The JVM thread was interrupted and its Spark jobs cancelled; code that ignores
        both (a busy loop) is stopped with Thread.stop, the last resort that Java 17 still
        offers, so the REPL stays usable and the cores are freed.
        """
        thread = self.abandoned_thread
        if thread is None:
            return
        deadline = time.monotonic() + grace
        stopped = False
        while thread.isAlive():
            if time.monotonic() > deadline:
                if stopped:
                    raise RuntimeError(
                        "the Scala interpreter is still busy with a cancelled statement")
                log("the cancelled Scala statement is still running; stopping its thread")
                try:
                    thread.stop()
                except Exception as e:
                    log("Thread.stop failed: %s" % short(e, 200))
                stopped = True
                deadline = time.monotonic() + 5.0
            time.sleep(0.1)
        if self.abandoned_thread is thread:
            self.abandoned_thread = None

    def _execute_lines(self, lines):
        """Livy's executeLines: line by line, joining lines while the code is incomplete."""
        last = ok_body({"text/plain": ""})
        i = 0
        while i < len(lines):
            head = lines[i]
            kind, body = self._execute_line(head)
            if kind == "incomplete":
                if i + 1 < len(lines):
                    lines[i + 1] = head + "\n" + lines[i + 1]
                    i += 1
                    continue
                # A trailing comment also looks incomplete; wrapping it in braces tells them apart.
                retry_kind, _ = self._execute_line("{\n" + head + "\n}")
                if retry_kind in ("incomplete", "error"):
                    return error_body("Error", "incomplete statement", [])
                return last
            if kind == "error":
                return body
            last = self._merge(last, body)
            i += 1
        return last

    @staticmethod
    def _merge(previous, current):
        prev_data, cur_data = previous["data"], current["data"]
        if "text/plain" in prev_data and "text/plain" in cur_data:
            prev_text, cur_text = prev_data["text/plain"], cur_data["text/plain"]
            if prev_text or cur_text:
                return ok_body({"text/plain": prev_text + cur_text})
        return current

    def _execute_line(self, code):
        magic = _SCALA_MAGIC.fullmatch(code)
        if magic:
            return self._execute_magic(magic.group(1), magic.group(2))
        result = str(self.intp.interpret(code))
        output = self._flush_and_read()
        if result == "Success":
            return "ok", ok_body({"text/plain": output})
        if result == "Incomplete":
            return "incomplete", None
        if not output.strip():
            # Scala 2.13 reports blank and comment-only input as a silent Error (2.12 said
            # Incomplete and Livy then treated it as empty): it is not a failure.
            return "ok", ok_body({"text/plain": ""})
        return "error", self._parse_error(output)

    @staticmethod
    def _parse_error(output):
        lines = [line for line in _KEEP_NEWLINE_SPLIT.split(output) if line]
        if not lines:
            return error_body("Error", "unknown error", [])
        # Livy uses the first line. Scala 2.13 starts compile errors with the caret line
        # ("       ^"), so prefer the first line that carries "error:" when there is one.
        index = 0
        for i, line in enumerate(lines):
            if "error:" in line:
                index = i
                break
        return error_body("Error", lines[index].strip(), lines[:index] + lines[index + 1:])

    # -- magics -----------------------------------------------------------

    def _value_json(self, name):
        """JSON text of a REPL value (RDDs: first 10 elements), computed by json4s like Livy."""
        self.box.set(None)
        code = ("__sparkgate_box.set(org.json4s.jackson.JsonMethods.compact("
                "org.json4s.Extraction.decompose(({%s}: Any) match { "
                "case __r: org.apache.spark.rdd.RDD[_] => __r.take(10); case __o => __o })"
                "(org.json4s.DefaultFormats)))" % name)
        result = str(self.intp.interpret(code))
        output = self._flush_and_read()
        if result != "Success":
            if "not found" in output or not name.strip():
                return None, error_body("NameError", "Value %s does not exist" % name, [])
            return None, error_body("ValueError", "Failed to convert value into a JSON value", [])
        return json.loads(self.box.getAndSet(None)), None

    def _execute_magic(self, magic, rest):
        if magic not in ("json", "table"):
            return "error", error_body("UnknownMagic", "Unknown magic command %s" % magic, [])
        value, err = self._value_json(rest)
        if err is not None:
            return "error", err
        if magic == "json":
            return "ok", ok_body({"application/json": value})
        return self._table_from_json(value)

    @classmethod
    def _table_type(cls, value):
        if value is None:
            return "NULL_TYPE"
        if isinstance(value, bool):
            return "BOOLEAN_TYPE"
        if isinstance(value, str):
            return "STRING_TYPE"
        if isinstance(value, int):
            return "BIGINT_TYPE"
        if isinstance(value, float):
            return "DOUBLE_TYPE"
        members = value if isinstance(value, list) else list(value.values())
        if len({cls._table_type(v) for v in members}) > 1:
            raise TypeError("table rows have different types")
        return "ARRAY_TYPE" if isinstance(value, list) else "MAP_TYPE"

    def _table_from_json(self, value):
        rows = value if isinstance(value, list) else [value]
        headers, data = OrderedDict(), []
        try:
            for row in rows:
                if isinstance(row, list):
                    fields = [(str(i), v) for i, v in enumerate(row)]
                elif isinstance(row, dict):
                    fields = list(row.items())
                else:
                    fields = [("0", row)]
                cols = []
                for key, col in fields:
                    type_name = self._table_type(col)
                    header = headers.get(key)
                    if header is None:
                        headers[key] = {"name": key, "type": type_name}
                    elif header["type"] != type_name:
                        raise TypeError("table rows have different types")
                    cols.append(col)
                data.append(cols)
        except TypeError:
            return "error", error_body("TypeError", "table rows have different types", [])
        return "ok", ok_body({"application/vnd.livy.table.v1+json": {
            "headers": list(headers.values()), "data": data}})

    # -- cancel, completion, jars ----------------------------------------

    def interrupt(self):
        """Interrupt the JVM thread running the statement; True if there was one."""
        return interrupt_jvm(self.exec_thread, "the Scala statement thread")

    def complete(self, code, cursor):
        # The first completion may have to start the REPL (several seconds); the gateway
        # waits for it up to its completion timeout. A running statement holds the lock.
        if not self.lock.acquire(timeout=self.completion_wait_secs):
            return []
        try:
            try:
                self.ensure_started()
            except ScalaStartError:
                return []
            jvm = self.jvm
            shell = jvm.scala.tools.nsc.interpreter.shell
            completer = shell.ReplCompletion(self.intp, shell.Accumulator())
            result = completer.complete(code, max(0, min(int(cursor), len(code))))
            candidates = jvm.scala.jdk.javaapi.CollectionConverters.asJava(result.candidates())
            names = []
            for candidate in candidates:
                name = candidate.name()
                if name and name not in names:
                    names.append(name)
                if len(names) >= MAX_COMPLETIONS:
                    break
            self._flush_and_read()
            return names
        except Exception as e:
            log("Scala completion failed: %s" % short(e, 300))
            return []
        finally:
            self.lock.release()

    def add_jar(self, uri):
        with self.lock:
            if self.intp is None:
                self.pending_jars.append(uri)
            else:
                self._add_jar_to_repl(uri)

    def _add_jar_to_repl(self, uri):
        jvm = self.jvm
        if uri.startswith("file:"):
            url = jvm.java.net.URI(uri).toURL()
        elif "://" not in uri and not re.match(r"^[a-zA-Z][\w+.-]*:", uri):
            url = jvm.java.io.File(uri).toURI().toURL()
        else:
            log("jar %s is not local; it reaches executors but not the Scala REPL" % uri)
            return
        jlist = jvm.java.util.ArrayList()
        jlist.add(url)
        self.intp.addUrlsToClassPath(
            jvm.scala.jdk.javaapi.CollectionConverters.asScala(jlist).toList())


# ---------------------------------------------------------------------------
# SparkR (not available in this driver)
# ---------------------------------------------------------------------------

class SparkRInterpreter:
    def __init__(self):
        spark_home = os.environ.get("SPARK_HOME", "")
        has_r = shutil.which("Rscript") is not None or shutil.which("R") is not None
        has_sparkr = os.path.isdir(os.path.join(spark_home, "R", "lib", "SparkR"))
        if not has_r:
            self.reason = "SparkR is not available on this host: R is not installed"
        elif not has_sparkr:
            self.reason = "SparkR is not available on this host: the SparkR package was not found"
        else:
            self.reason = "SparkR is not available on this host: this driver does not run R"

    def execute(self, code):
        return error_body("InterpreterError", self.reason, [])

    @staticmethod
    def complete(code, cursor):
        return []


# ---------------------------------------------------------------------------
# The connection to the gateway
# ---------------------------------------------------------------------------

# -- jobs of Livy's programmatic API ---------------------------------------------

# Where a job's result goes in its output's data (the gateway's engine/job.rs reads it).
JOB_RESULT_KEY = "application/vnd.sparkgate.job-result+base64"


def _cloudpickle():
    """cloudpickle as Livy's Python client pickles with it (scripts/setup.sh installs it into
    the drivers' venv). Without that package, pyspark's own copy stands in under its name, so
    jobs still unpickle; but results that pickle code or classes by value then name
    `pyspark.cloudpickle`, which a client without pyspark cannot unpickle."""
    try:
        import cloudpickle
        return cloudpickle
    except ImportError:
        from pyspark import cloudpickle
        sys.modules.setdefault("cloudpickle", cloudpickle)
        inner = getattr(cloudpickle, "cloudpickle", None)
        if inner is not None:
            sys.modules.setdefault("cloudpickle.cloudpickle", inner)
        return cloudpickle


class JobContext:
    """What a Python job is called with: the session's contexts, as Livy's JobContext has them."""

    def __init__(self, spark, sc):
        self._spark = spark
        self._sc = sc
        self._streaming = None
        self._tmp = None

    @property
    def sc(self):
        return self._sc

    @property
    def spark(self):
        return self._spark

    @property
    def spark_session(self):
        return self._spark

    @property
    def sql_ctx(self):
        from pyspark.sql import SQLContext
        return SQLContext(self._sc, self._spark)

    @property
    def hive_ctx(self):
        return self.sql_ctx

    @property
    def streaming_ctx(self):
        if self._streaming is None:
            raise ValueError("create the streaming context first: create_streaming_ctx(batch_duration)")
        return self._streaming

    def create_streaming_ctx(self, batch_duration):
        if self._streaming is not None:
            raise ValueError("the streaming context exists already")
        from pyspark.streaming import StreamingContext
        self._streaming = StreamingContext(self._sc, batch_duration)

    def stop_streaming_ctx(self):
        if self._streaming is None:
            raise ValueError("there is no streaming context to stop")
        self._streaming.stop(stopSparkContext=False)
        self._streaming = None

    @property
    def local_tmp_dir_path(self):
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="sparkgate-job-")
        return self._tmp


class PythonJobRunner:
    """Runs `pyspark` jobs: base64 of a cloudpickled callable taking a JobContext. The result
    is pickled with cloudpickle, and its bytes are the pickle's base64 text, as Livy's Python
    client expects them (it decodes base64 twice)."""

    def __init__(self, spark, sc):
        self.context = JobContext(spark, sc)

    def execute(self, code):
        cloudpickle = _cloudpickle()
        # BaseException: a job (or what unpickling it runs) that raises SystemExit or
        # KeyboardInterrupt fails, as a statement does; it does not end the session.
        try:
            job = cloudpickle.loads(base64.b64decode(code))
        except StatementCancelled:
            raise
        except BaseException as e:
            return error_body("JobDeserializationError", "the job could not be unpickled: %s" % short(e, 500), [])
        if not callable(job):
            return error_body("JobDeserializationError",
                              "the job is a %s, not a callable taking a JobContext" % type(job).__name__, [])
        try:
            value = job(self.context)
        except StatementCancelled:
            raise
        except BaseException as e:
            # The traceback from the job's own frame on (this runner's is left out).
            lines = traceback.format_exception(type(e), e, e.__traceback__.tb_next, chain=False)
            return error_body(type(e).__name__, short(e), lines)
        try:
            pickled = cloudpickle.dumps(value)
        except StatementCancelled:
            raise
        except BaseException as e:
            return error_body("JobResultError", "the job's result could not be pickled: %s" % short(e, 500), [])
        inner = base64.b64encode(pickled)
        return ok_body({JOB_RESULT_KEY: base64.b64encode(inner).decode("ascii")})


class JvmJobRunner:
    """Runs `spark` jobs: base64 of a Kryo-serialized org.apache.livy.Job, run by the job API
    jar's sparkgate.jobs.JobRunner with the session's contexts; the result's bytes are its
    Kryo serialization. The runner comes from the driver's class path, else from the jar the
    gateway put into the session's directory (loaded here, and shipped to executors)."""

    RUNNER = "sparkgate.jobs.JobRunner"

    def __init__(self, spark, sc, api_jar):
        self.spark, self.sc, self.api_jar = spark, sc, api_jar
        self.runner = None
        self.lock = threading.Lock()
        # Jars the session has: given at launch, and added later (upload-jar, add-jar).
        self.jars = [j for j in sc.getConf().get("spark.jars", "").split(",") if j]

    def add_jar(self, uri):
        with self.lock:
            self.jars.append(uri)
            runner = self.runner
        if runner is not None:
            self._add(runner, uri)

    @staticmethod
    def _add(runner, uri):
        if uri.startswith("file:") or ("://" not in uri and not re.match(r"^[a-zA-Z][\w+.-]*:", uri)):
            runner.addJar(uri)
        else:
            log("jar %s is not local; it reaches executors but not the jobs' class loader" % uri)

    def _runner(self):
        with self.lock:
            if self.runner is not None:
                return self.runner
            jvm = self.sc._jvm
            loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
            try:
                runner_class = jvm.java.lang.Class.forName(self.RUNNER, True, loader)
            except Exception:
                if not self.api_jar:
                    raise JobApiMissing()
                url = jvm.java.io.File(self.api_jar).toURI().toURL()
                urls = self.sc._gateway.new_array(jvm.java.net.URL, 1)
                urls[0] = url
                loader = jvm.java.net.URLClassLoader(urls, loader)
                runner_class = jvm.java.lang.Class.forName(self.RUNNER, True, loader)
                # Executors need the API's interfaces too (a job's closures may name them).
                self.sc._jsc.addJar(self.api_jar)
            args = self.sc._gateway.new_array(jvm.java.lang.Object, 2)
            args[0] = self.spark._jsparkSession
            args[1] = tempfile.mkdtemp(prefix="sparkgate-jobs-")
            self.runner = runner_class.getConstructors()[0].newInstance(args)
            jars = list(self.jars)
        for uri in jars:
            try:
                self._add(self.runner, uri)
            except Exception as e:
                log("could not add %s to the jobs' class loader: %s" % (uri, describe_error(e)))
        return self.runner

    def execute(self, code):
        try:
            runner = self._runner()
        except JobApiMissing:
            return error_body("JobApiMissing", "this session's driver has no job API jar (the gateway's "
                              "spark.job_api_jar); spark jobs cannot run here", [])
        try:
            job = base64.b64decode(code)
        except Exception as e:
            return error_body("JobDeserializationError", "the job is not base64: %s" % short(e, 200), [])
        try:
            result = runner.run(bytearray(job))
        except StatementCancelled:
            self._wait_stopped(runner)
            raise
        except Exception as e:
            jexc = getattr(e, "java_exception", None)
            if jexc is None:
                return error_body(type(e).__name__, short(e), [])
            message, frames = _java_error_parts(e)
            try:
                ename = jexc.getClass().getName()
            except Exception:
                ename = "JobFailed"
            return error_body(ename, short(message), frames)
        return ok_body({JOB_RESULT_KEY: base64.b64encode(bytes(result or b"")).decode("ascii")})

    @staticmethod
    def _wait_stopped(runner):
        """A cancel stops waiting for the JVM call at once, but the job runs on its JVM thread
        until it honours the interrupt: it is cancelled, and the next one may start, only when
        that thread is done. Interrupted again every second, for jobs that clear the flag."""
        waited = 0
        while True:
            try:
                if not runner.isRunning():
                    return
                time.sleep(0.05)
                waited += 1
                if waited % 20 == 0:
                    runner.interrupt()
            except StatementCancelled:
                continue  # the same job cancelled again
            except Exception as e:
                log("could not tell whether the cancelled JVM job ended: %s" % short(e, 200))
                return

    def interrupt(self):
        """Interrupts the running job's JVM thread (a cancel); True if there was a runner."""
        return interrupt_jvm(self.runner, "the JVM job")


class JobApiMissing(Exception):
    """The job API jar is neither on the class path nor given."""


class HandshakeError(Exception):
    pass


class ProtocolError(Exception):
    pass


def handshake_mac(key, role, session_id, client_nonce, server_nonce):
    text = "sparkgate-rpc-v1|%s|%d|%s|%s" % (role, session_id, client_nonce, server_nonce)
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


class Link:
    """Dials the gateway, authenticates, reads frames and redials when the connection drops.

    One lock serialises every TLS operation: an SSL connection must not be used from two
    threads at once, so the reader only holds it for short, time-limited receives.
    """

    def __init__(self, conf, on_connected, on_message, on_give_up, resync_lock):
        self.conf = conf
        self.on_connected = on_connected
        self.on_message = on_message
        self.on_give_up = on_give_up
        self.resync_lock = resync_lock
        self.io_lock = threading.Lock()
        self.sock = None
        self.closing = False

    def start(self):
        threading.Thread(target=self._run, name="sparkgate-link", daemon=True).start()

    # -- sending ----------------------------------------------------------

    def send(self, msg):
        return self.send_frame(encode_json(msg))

    def send_frame(self, payload):
        """Send one frame if connected; False when there is no usable connection."""
        if len(payload) > self.conf.max_frame_bytes:
            log("dropping an outgoing frame of %d bytes (limit %d)"
                % (len(payload), self.conf.max_frame_bytes))
            return False
        with self.io_lock:
            sock = self.sock
            if sock is None:
                return False
            try:
                sock.settimeout(SEND_TIMEOUT_SECS)
                sock.sendall(len(payload).to_bytes(4, "big") + payload)
                sock.settimeout(0.2)
                return True
            except (OSError, ValueError) as e:
                log("send failed: %s" % e)
                self._drop_locked(sock)
                return False

    def _drop_locked(self, sock):
        if self.sock is sock:
            self.sock = None
        try:
            # Bypass SSLSocket.shutdown: we only want to wake the reader with EOF.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self):
        self.closing = True
        with self.io_lock:
            if self.sock is not None:
                self._drop_locked(self.sock)

    # -- dialling ---------------------------------------------------------

    def _run(self):
        delay = BACKOFF_START_SECS
        deadline = time.monotonic() + self.conf.reconnect_window_secs
        attempt_failed_logged = False
        while not self.closing:
            try:
                sock = self._dial()
            except Exception as e:
                if not attempt_failed_logged:
                    log("cannot reach the gateway at %s: %s"
                        % (self.conf.rpc_target(), short(e, 300)))
                    attempt_failed_logged = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log("no connection for %d s; giving up" % self.conf.reconnect_window_secs)
                    self.on_give_up()
                    return
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, BACKOFF_MAX_SECS)
                continue
            log("connected to the gateway")
            attempt_failed_logged = False
            delay = BACKOFF_START_SECS
            self._serve(sock)
            if self.closing:
                return
            log("connection to the gateway lost; redialling")
            deadline = time.monotonic() + self.conf.reconnect_window_secs

    def _dial(self):
        conf = self.conf
        # Trust exactly ca_pem (no system roots) and check rpc_server_name against it.
        context = ssl.create_default_context(cadata=conf.ca_pem)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # ca_pem may be the gateway's own leaf certificate: let it anchor the chain, and do
        # not apply Python 3.13's RFC 5280 strictness to a certificate we pin explicitly.
        context.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
        context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
        raw = self._connect_raw(conf)
        try:
            sock = context.wrap_socket(raw, server_hostname=conf.rpc_server_name)
        except BaseException:
            raw.close()
            raise
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT_SECS)
            self._handshake(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _connect_raw(conf):
        """The plain connection TLS runs over: the session's own Unix socket when the gateway
        gave one (local and client mode: no other session can reach it), else TCP."""
        if conf.rpc_unix_path:
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                raw.settimeout(DIAL_TIMEOUT_SECS)
                raw.connect(conf.rpc_unix_path)
            except BaseException:
                raw.close()
                raise
            return raw
        raw = socket.create_connection((conf.rpc_host, conf.rpc_port), timeout=DIAL_TIMEOUT_SECS)
        # Small frames (results, acks) must not wait for Nagle's algorithm.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return raw

    def _handshake(self, sock):
        conf = self.conf
        client_nonce = secrets.token_bytes(32).hex()
        self._write_blocking(sock, {"type": "hello", "protocol_version": PROTOCOL_VERSION,
                                    "session_id": conf.session_id, "client_nonce": client_nonce})
        challenge = self._read_blocking(sock)
        server_nonce = challenge.get("server_nonce")
        if challenge.get("type") != "challenge" or not isinstance(server_nonce, str) \
                or not re.fullmatch(r"[0-9a-f]{64}", server_nonce):
            raise HandshakeError("unexpected challenge")
        self._write_blocking(sock, {"type": "proof", "mac": handshake_mac(
            conf.secret_key, "driver", conf.session_id, client_nonce, server_nonce)})
        answer = self._read_blocking(sock)
        expected = handshake_mac(conf.secret_key, "gateway", conf.session_id,
                                 client_nonce, server_nonce)
        mac = answer.get("mac")
        if answer.get("type") != "ok" or not isinstance(mac, str) \
                or not hmac.compare_digest(expected.encode("ascii"), mac.encode("utf-8")):
            raise HandshakeError("the gateway did not prove knowledge of the session secret")

    def _write_blocking(self, sock, msg):
        payload = encode_json(msg)
        sock.sendall(len(payload).to_bytes(4, "big") + payload)

    def _read_blocking(self, sock):
        header = self._read_exact(sock, 4)
        length = int.from_bytes(header, "big")
        if length > self.conf.max_frame_bytes:
            raise ProtocolError("frame too large")
        return self._decode(self._read_exact(sock, length))

    @staticmethod
    def _read_exact(sock, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed during the handshake")
            buf += chunk
        return bytes(buf)

    @staticmethod
    def _decode(payload):
        msg = json.loads(payload.decode("utf-8"))
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise ProtocolError("a message must be an object with a type")
        return msg

    # -- reading ----------------------------------------------------------

    def _serve(self, sock):
        sock.settimeout(0.2)
        # Publish the socket and resynchronise under the driver's lock so no state change
        # can slip in between (and be overtaken by) the resync messages.
        with self.resync_lock:
            with self.io_lock:
                self.sock = sock
            self.on_connected()
        buf = bytearray()
        try:
            while not self.closing:
                if sock.pending() == 0:
                    readable, _, _ = select.select([sock], [], [], 1.0)
                    if not readable:
                        if self.sock is not sock:
                            return
                        continue
                with self.io_lock:
                    if self.sock is not sock:
                        return
                    try:
                        data = sock.recv(65536)
                    except (socket.timeout, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        continue
                if not data:
                    return
                buf += data
                while len(buf) >= 4:
                    length = int.from_bytes(buf[:4], "big")
                    if length > self.conf.max_frame_bytes:
                        raise ProtocolError("incoming frame of %d bytes exceeds the limit" % length)
                    if len(buf) < 4 + length:
                        break
                    payload = bytes(buf[4:4 + length])
                    del buf[:4 + length]
                    self.on_message(self._decode(payload))
        except Exception as e:
            log("connection error: %s" % short(e, 300))
        finally:
            with self.io_lock:
                if self.sock is sock:
                    self.sock = None
            try:
                sock.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------

_KIND_ALIASES = {"pyspark": "pyspark", "python": "pyspark", "scala": "scala", "spark": "scala",
                 "sql": "sql", "sparkr": "sparkr", "r": "sparkr"}


class Driver:
    def __init__(self, conf):
        self.conf = conf
        # Guards the session state below *and* the sends that publish it, so the gateway
        # sees changes in the order they happened (also across a reconnect resync).
        self.lock = threading.RLock()
        self.state = "starting"
        self.state_message = None
        self.app_info = None
        self.results = OrderedDict()   # statement id -> encoded statement_result frame
        self.queued = set()            # ids accepted but not started
        self.precancelled = set()      # queued ids cancelled before they started
        self.current = None            # id of the running statement
        self.current_kind = None
        self.current_progress = 0.0
        self.exec_sid = None           # set while user code runs: SIGINT may interrupt it
        self.cancel_target = None      # id whose cancellation SIGINT should raise
        self.cancelled_groups = {}     # statement id -> watch deadline (see _reap_cancelled)
        self.statements = queue.Queue()
        self.control = queue.Queue()
        self.spark_ready = threading.Event()
        self.shutting_down = threading.Lock()
        self.main_ident = threading.main_thread().ident
        self.spark = self.sc = None
        self.start_failure = None
        self.interpreters = {}
        self.link = Link(conf, self._on_connected, self._on_message, self._give_up, self.lock)

    # -- state publication -------------------------------------------------

    def _state_msg(self):
        msg = {"type": "state", "state": self.state}
        if self.state_message is not None:
            msg["message"] = self.state_message
        return msg

    def set_state(self, state, message=None):
        with self.lock:
            if self.state == state and self.state_message == message:
                return
            self.state, self.state_message = state, message
            self.link.send(self._state_msg())

    def _on_connected(self):
        # Called by the link with self.lock held.
        self.link.send(self._state_msg())
        if self.app_info is not None:
            self.link.send(self.app_info)
        for frame in self.results.values():
            self.link.send_frame(frame)
        if self.current is not None:
            self.link.send({"type": "statement_update", "id": self.current,
                            "state": "running", "progress": self.current_progress})

    # -- incoming messages (link thread: never block here) -----------------

    def _on_message(self, msg):
        kind = msg.get("type")
        if kind == "ping":
            self.link.send({"type": "pong"})
        elif kind == "execute":
            self._on_execute(msg)
        elif kind == "cancel":
            sid = msg.get("id")
            if isinstance(sid, int):
                threading.Thread(target=self._cancel, args=(sid,), name="sparkgate-cancel",
                                 daemon=True).start()
        elif kind == "ack":
            with self.lock:
                self.results.pop(msg.get("id"), None)
        elif kind in ("complete", "add_file"):
            self.control.put(msg)
        elif kind == "shutdown":
            threading.Thread(target=self.shutdown, args=(EXIT_OK, "the gateway asked to stop"),
                             name="sparkgate-shutdown", daemon=True).start()
        else:
            log("ignoring a message of type %r" % kind)

    def _on_execute(self, msg):
        sid, kind, code = msg.get("id"), msg.get("kind"), msg.get("code")
        if not isinstance(sid, int) or not isinstance(kind, str) or not isinstance(code, str):
            log("ignoring a malformed execute message")
            return
        with self.lock:
            if sid == self.current or sid in self.queued:
                return  # already running or waiting: idempotent
            frame = self.results.get(sid)
            if frame is not None:
                self.link.send_frame(frame)
                return
            self.queued.add(sid)
        self.statements.put((sid, kind, code))

    # -- Spark --------------------------------------------------------------

    def start_spark(self):
        started = time.monotonic()
        try:
            from pyspark import SparkConf
            from pyspark.sql import SparkSession
            try:
                os.makedirs(self.conf.repl_class_dir, exist_ok=True)
            except OSError:
                # Cluster deploy mode: the gateway's directory does not exist on this host.
                self.conf.repl_class_dir = tempfile.mkdtemp(prefix="sparkgate-repl-")
            spark_conf = SparkConf()
            # Must be set before the SparkContext exists: it makes Spark serve the Scala
            # REPL's generated classes to executors.
            spark_conf.set("spark.repl.class.outputDir", self.conf.repl_class_dir)
            self.spark = SparkSession.builder.config(conf=spark_conf).getOrCreate()
            self.sc = self.spark.sparkContext
            with self.lock:
                self.app_info = {"type": "app_info", "app_id": self.sc.applicationId,
                                 "spark_ui_url": self.sc.uiWebUrl}
                self.link.send(self.app_info)
            self.interpreters = {
                "pyspark": PythonInterpreter(self.spark, self.sc),
                "scala": ScalaInterpreter(self.spark, self.sc, self.conf.repl_class_dir,
                                          self.conf.completion_wait_secs),
                "sql": SqlInterpreter(self.spark, self.conf.sql_max_rows),
                "sparkr": SparkRInterpreter(),
                "pyspark_job": PythonJobRunner(self.spark, self.sc),
                "spark_job": JvmJobRunner(self.spark, self.sc, self.conf.job_api_jar),
            }
            log("Spark started in %.1f s (application %s)"
                % (time.monotonic() - started, self.sc.applicationId))
            self.set_state("idle")
        except Exception as e:
            self.start_failure = describe_error(e)
            log("Spark failed to start: %s" % self.start_failure)
            self.set_state("error", self.start_failure)
        finally:
            self.spark_ready.set()

    # -- statements (main thread) ------------------------------------------

    def serve_statements(self):
        while True:
            sid, kind, code = self.statements.get()  # the SIGINT handler is inert while idle
            try:
                self._run_statement(sid, kind, code)
            except StatementCancelled:
                # The signal landed outside the guarded window: still answer the statement.
                log("late cancellation signal for statement %d" % sid)
                self.exec_sid = None
                with self.lock:
                    if sid not in self.results:
                        self._finish(sid, "cancelled", cancelled_body())

    def _run_statement(self, sid, kind, code):
        with self.lock:
            self.queued.discard(sid)
            if sid in self.precancelled:
                self.precancelled.discard(sid)
                self._finish(sid, "cancelled", cancelled_body())
                return
            self.current, self.current_kind = sid, _KIND_ALIASES.get(kind, kind)
            self.current_progress = 0.0
            self.cancel_target = None
            self.state = "busy"
            self.state_message = None
            self.link.send(self._state_msg())
            self.link.send({"type": "statement_update", "id": sid, "state": "running",
                            "progress": 0.0})
        body = None
        try:
            self.exec_sid = sid  # from here on a cancel may raise StatementCancelled
            body = self._execute(sid, self.current_kind, code)
        except StatementCancelled:
            body = None
        # Leave the interruptible window; retry if a signal lands exactly here.
        while True:
            try:
                self.exec_sid = None
                break
            except StatementCancelled:
                continue
        cancelled = self.cancel_target == sid
        if cancelled:
            self._after_cancel()
        with self.lock:
            if cancelled or body is None:
                self._finish(sid, "cancelled", cancelled_body())
            else:
                self._finish(sid, "available", body)

    def _execute(self, sid, kind, code):
        if self.sc is None:
            return error_body("InterpreterError", "Fail to start interpreter",
                              [self.start_failure or "Spark is not running"])
        interpreter = self.interpreters.get(kind)
        if interpreter is None:
            return error_body("Error", "unknown statement kind '%s'" % kind, [])
        try:
            self.sc.setJobGroup(str(sid), "sparkgate statement %d" % sid, True)
            return interpreter.execute(code)
        except StatementCancelled:
            raise
        except Exception as e:
            log("internal error in statement %d: %s" % (sid, short(e, 500)))
            return error_body("InternalError", short(e), traceback.format_exception(
                type(e), e, e.__traceback__, chain=False))

    def _finish(self, sid, state, body):
        """Store and send a statement result (self.lock held)."""
        msg = {"type": "statement_result", "id": sid, "state": state,
               "output": livy_output(sid, body), "completed": int(time.time() * 1000)}
        try:
            frame = encode_json(msg)
        except (TypeError, ValueError) as e:
            frame = encode_json(dict(msg, output=livy_output(sid, error_body(
                "Error", "statement output is not JSON: %s" % short(e, 300), []))))
        if len(frame) > self.conf.max_frame_bytes:
            frame = encode_json(dict(msg, output=livy_output(sid, error_body(
                "Error", "statement output is too large to send (%d bytes; the limit is %d)"
                % (len(frame), self.conf.max_frame_bytes), []))))
        self.results[sid] = frame
        if self.current == sid:
            self.current = self.current_kind = None
        self.link.send_frame(frame)
        if self.state == "busy" and self.current is None:
            self.state = "idle"
            self.link.send(self._state_msg())

    def _after_cancel(self):
        """After a cancel the main thread's py4j connection may hold an abandoned reply: drop it."""
        try:
            client = self.sc._gateway._gateway_client
            get_connection = getattr(client, "get_thread_connection", None)
            if get_connection is None:
                return
            connection = get_connection()
            if connection is not None:
                try:
                    client.deque.remove(connection)
                except ValueError:
                    pass
                connection.close()
                client.thread_connection.connection = None
        except Exception as e:
            log("could not reset the py4j connection after a cancel: %s" % short(e, 300))

    # -- cancel ----------------------------------------------------------------

    def _on_sigint(self, signum, frame):
        # Raise only inside the cancelled statement's own execution window.
        sid = self.exec_sid
        if sid is not None and sid == self.cancel_target:
            raise StatementCancelled()

    def _interrupt_main(self, sid):
        """SIGINT the main thread if it is inside statement sid; True if signalled."""
        with self.lock:
            if self.current == sid and self.exec_sid == sid:
                signal.pthread_kill(self.main_ident, signal.SIGINT)
                return True
            return False

    def _cancel_jobs(self, sid):
        try:
            self.sc.cancelJobGroup(str(sid))
        except Exception as e:
            log("cancelJobGroup(%d) failed: %s" % (sid, short(e, 200)))

    def _cancel(self, sid):
        with self.lock:
            if sid in self.queued:
                self.precancelled.add(sid)
                return
            if self.current != sid:
                return
            self.cancel_target = sid
            kind = self.current_kind
        log("cancelling statement %d" % sid)
        with self.lock:
            self.cancelled_groups[sid] = time.monotonic() + CANCELLED_GROUP_WATCH_SECS
        self._cancel_jobs(sid)
        scala = self.interpreters.get("scala")
        # Scala runs inside the JVM: interrupt its thread and let IMain unwind normally;
        # abandoning the call from Python is only the fallback.
        jobs = self.interpreters.get("spark_job")
        jvm_interrupted = ((kind == "scala" and scala is not None and scala.interrupt())
                           or (kind == "spark_job" and jobs is not None and jobs.interrupt()))
        signal_after = SCALA_SIGNAL_AFTER_SECS if jvm_interrupted else 0.0
        started = time.monotonic()
        last_signal = None
        while self.current == sid and time.monotonic() - started < CANCEL_FORCE_TIMEOUT_SECS:
            elapsed = time.monotonic() - started
            if elapsed >= signal_after and (last_signal is None or elapsed - last_signal >= 1.0):
                if self._interrupt_main(sid):
                    last_signal = elapsed
            time.sleep(CANCEL_RETRY_INTERVAL_SECS)
            if self.current == sid:
                self._cancel_jobs(sid)  # jobs started after the first cancel (like Livy's loop)
        if self.current == sid:
            log("statement %d did not stop within %d s" % (sid, CANCEL_FORCE_TIMEOUT_SECS))
        elif kind == "scala" and scala is not None:
            try:
                scala.reap_abandoned()
            except Exception as e:
                log("could not stop the cancelled Scala statement: %s" % short(e, 200))

    # -- progress ---------------------------------------------------------------

    def _reap_cancelled(self):
        """Cancels jobs of cancelled statements that reached the scheduler after the cancel."""
        now = time.monotonic()
        with self.lock:
            watched = [(sid, deadline) for sid, deadline in self.cancelled_groups.items()]
        for sid, deadline in watched:
            if now > deadline:
                with self.lock:
                    self.cancelled_groups.pop(sid, None)
                continue
            if sid == self.current:
                continue  # the cancel loop itself is still at work
            try:
                tracker = self.sc.statusTracker()
                for job_id in tracker.getJobIdsForGroup(str(sid)):
                    job = tracker.getJobInfo(job_id)
                    if job is not None and job.status == "RUNNING":
                        log("cancelling a late job %d of cancelled statement %d" % (job_id, sid))
                        self._cancel_jobs(sid)
                        break
            except Exception:
                continue

    def _progress_loop(self):
        while True:
            time.sleep(PROGRESS_INTERVAL_SECS)
            if self.cancelled_groups and self.sc is not None:
                self._reap_cancelled()
            sid = self.current
            if sid is None or self.sc is None:
                continue
            try:
                tracker = self.sc.statusTracker()
                total = done = 0
                for job_id in tracker.getJobIdsForGroup(str(sid)):
                    job = tracker.getJobInfo(job_id)
                    if job is None:
                        continue
                    for stage_id in job.stageIds:
                        stage = tracker.getStageInfo(stage_id)
                        if stage is not None:
                            total += stage.numTasks
                            done += stage.numCompletedTasks
                progress = (done / total) if total else 0.0
            except Exception:
                continue
            with self.lock:
                if self.current == sid and sid not in self.results \
                        and progress != self.current_progress:
                    self.current_progress = progress
                    self.link.send({"type": "statement_update", "id": sid, "state": "running",
                                    "progress": progress})

    # -- completion and files (control thread) ---------------------------------

    def _control_loop(self):
        while True:
            msg = self.control.get()
            self.spark_ready.wait()
            try:
                if msg["type"] == "complete":
                    self._complete(msg)
                else:
                    self._add_file(msg)
            except Exception as e:
                log("control request failed: %s" % short(e, 300))

    def _complete(self, msg):
        candidates = []
        code, cursor = msg.get("code"), msg.get("cursor")
        kind = _KIND_ALIASES.get(msg.get("kind"), msg.get("kind"))
        interpreter = self.interpreters.get(kind)
        if interpreter is not None and isinstance(code, str) and isinstance(cursor, int):
            try:
                candidates = interpreter.complete(code, cursor)
            except Exception as e:
                log("completion failed: %s" % short(e, 300))
        self.link.send({"type": "completion", "request_id": msg.get("request_id"),
                        "candidates": candidates})

    def _add_file(self, msg):
        what, uri = msg.get("what"), msg.get("uri")
        error = None
        try:
            if self.sc is None:
                raise RuntimeError("Spark is not running")
            if not isinstance(uri, str) or not uri:
                raise ValueError("missing uri")
            if what == "jar":
                self.sc._jsc.addJar(uri)
                self.interpreters["scala"].add_jar(uri)
                self.interpreters["spark_job"].add_jar(uri)
            elif what == "pyfile":
                self.sc.addPyFile(uri)
            elif what == "file":
                self.sc.addFile(uri)
            else:
                raise ValueError("unknown file kind %r" % (what,))
        except Exception as e:
            error = describe_error(e)
            log("add_file %s failed: %s" % (what, short(error, 300)))
        self.link.send({"type": "add_file_result", "request_id": msg.get("request_id"),
                        "ok": error is None, "error": error})

    # -- lifecycle ----------------------------------------------------------------

    def _watchdog(self):
        """spark-submit's JVM is our parent: if it goes away, so do we."""
        parent = os.getppid()
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                log("the driver JVM has exited")
                hard_exit(EXIT_JVM_GONE)

    def _give_up(self):
        self.shutdown(EXIT_RECONNECT_WINDOW, "the gateway could not be reached")

    def shutdown(self, code, reason):
        if not self.shutting_down.acquire(blocking=False):
            return
        log("stopping: %s" % reason)
        # Whatever happens below, do not linger for ever.
        threading.Timer(60.0, hard_exit, args=(code,)).start()
        sid = self.current
        if sid is not None and self.sc is not None:
            self._cancel_jobs(sid)
        if self.spark is not None:
            try:
                self.spark.stop()
            except Exception as e:
                log("spark.stop failed: %s" % short(e, 300))
        self.link.close()
        hard_exit(code)

    def start_background_threads(self):
        for target, name in ((self._progress_loop, "sparkgate-progress"),
                             (self._control_loop, "sparkgate-control"),
                             (self._watchdog, "sparkgate-watchdog")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def prewarm_scala(self):
        """Scala sessions: build the REPL in the background so the first statement is quick."""
        scala = self.interpreters.get("scala")
        if scala is not None:
            scala.start_async()


class _Py4jNoiseFilter(logging.Filter):
    """py4j logs full tracebacks when a call is interrupted (and when closing that
    connection races the JVM); both are expected on cancel and our log line suffices."""

    _EXPECTED = ("KeyboardInterrupt while sending command",
                 "Exception occurred while shutting down connection")

    def filter(self, record):
        return not str(record.msg).startswith(self._EXPECTED)


def main():
    # Configure logging before anything can trigger logging.basicConfig() against a
    # captured sys.stderr during a statement.
    handler = logging.StreamHandler(_REAL_STDERR)
    handler.setFormatter(logging.Formatter(LOG_PREFIX + "%(name)s %(levelname)s: %(message)s"))
    handler.addFilter(_Py4jNoiseFilter())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    os.environ.setdefault("MPLBACKEND", "Agg")  # no display on a driver host

    try:
        conf = DriverConf.load_and_delete()
    except (ConfError, OSError, ValueError) as e:
        log("bad driver configuration: %s" % e)
        hard_exit(EXIT_BAD_CONF)

    log("session %d (%s) starting" % (conf.session_id, conf.kind))
    driver = Driver(conf)
    driver.link.start()
    driver.start_spark()
    # pyspark installs its own SIGINT handler while creating the SparkContext; ours goes after.
    signal.signal(signal.SIGINT, driver._on_sigint)
    driver.start_background_threads()
    if conf.kind == "scala" and driver.sc is not None:
        driver.prewarm_scala()
    driver.serve_statements()


if __name__ == "__main__":
    main()
