// sparkgate web UI: progressive enhancement only. The pages are complete without it; this
// adds the actions (through the REST API, with the CSRF header) and refreshes a session page
// while something in it is still running. Text from the server is only ever set with
// textContent, never parsed as HTML.
"use strict";

const CSRF = { "X-Requested-By": "sparkgate-ui" };

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { ...CSRF } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    // The login (its cookie) ended: log in again, then come back to this page.
    location.assign(`/ui/login?next=${encodeURIComponent(location.pathname)}`);
    throw new Error("the login ended; log in again");
  }
  let answer = null;
  try { answer = await response.json(); } catch (_) { /* an empty body */ }
  if (!response.ok) {
    throw new Error((answer && answer.msg) || `${response.status} ${response.statusText}`);
  }
  return answer;
}

function showError(id, error) {
  const p = document.getElementById(id);
  if (p) { p.textContent = String(error.message || error); p.hidden = false; }
}

function enhanceRunForm() {
  const form = document.getElementById("run");
  if (!form) return;
  const id = form.dataset.session;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const code = form.elements.code.value;
    const kind = form.elements.kind.value;
    try {
      await api("POST", `/sessions/${encodeURIComponent(id)}/statements`, { code, kind });
      form.elements.code.value = "";
      location.reload();
    } catch (error) {
      showError("run-error", error);
    }
  });
}

function enhanceButtons() {
  for (const button of document.querySelectorAll("button.cancel")) {
    button.addEventListener("click", async () => {
      const { session, statement } = button.dataset;
      button.disabled = true;
      try {
        await api("POST", `/sessions/${encodeURIComponent(session)}/statements/${encodeURIComponent(statement)}/cancel`);
      } catch (error) {
        showError("run-error", error);
      }
      location.reload();
    });
  }
  const del = document.getElementById("delete");
  if (del) {
    del.addEventListener("click", async () => {
      if (!confirm("Delete this session? Its Spark application stops.")) return;
      try {
        await api("DELETE", `/sessions/${encodeURIComponent(del.dataset.session)}`);
        location.assign("/ui/sessions");
      } catch (error) {
        showError("run-error", error);
      }
    });
  }
}

function enhanceBatch() {
  const kill = document.getElementById("kill");
  if (kill) {
    kill.addEventListener("click", async () => {
      if (!confirm("Delete this batch? A running Spark application is killed, and the batch and its log are removed.")) return;
      try {
        await api("DELETE", `/batches/${encodeURIComponent(kill.dataset.batch)}`);
        location.assign("/ui/batches");
      } catch (error) {
        showError("run-error", error);
      }
    });
  }
  // Following the end of a running batch's log: new lines are appended as text.
  const log = document.getElementById("log");
  const state = document.getElementById("batch-state");
  if (!log || !state || !log.dataset.batch || log.dataset.tail !== "true") return;
  const id = encodeURIComponent(log.dataset.batch);
  const running = () => ["not_started", "starting", "running"].includes(state.textContent.trim());
  const follow = async () => {
    try {
      const page = await api("GET", `/batches/${id}/log?from=${log.dataset.next}&size=1000`);
      if (page && Array.isArray(page.log) && page.log.length > 0) {
        log.append(document.createTextNode(page.log.join("\n") + "\n"));
        log.dataset.next = String(page.from + page.log.length);
        log.scrollTop = log.scrollHeight;
      }
      const total = document.getElementById("log-total");
      if (total && page) total.textContent = String(page.total);
      const now = await api("GET", `/batches/${id}/state`);
      if (now && now.state) state.textContent = now.state;
    } catch (_) { /* the next round tries again */ }
    if (running()) setTimeout(follow, 2000);
  };
  if (running()) setTimeout(follow, 2000);
}

// While the session starts, the page refreshes itself every two seconds (not while the user
// is typing code). A running statement's progress comes live from its event stream
// (server-sent events); when it ends, the page is loaded again to show its output.
function reloadSoon() {
  setTimeout(() => {
    const code = document.getElementById("code");
    const typing = code && (code.value !== "" || document.activeElement === code);
    if (typing) { reloadSoon(); } else { location.reload(); }
  }, 2000);
}

function followStatements() {
  const state = document.getElementById("session-state");
  if (!state) return;
  if (["not_started", "starting"].includes(state.textContent.trim())) { reloadSoon(); return; }
  const running = document.querySelectorAll(
    '.statement[data-state="running"], .statement[data-state="waiting"], .statement[data-state="cancelling"]');
  if (running.length === 0) return;
  if (typeof EventSource === "undefined") { reloadSoon(); return; }
  const session = encodeURIComponent(document.getElementById("log").dataset.session);
  // One stream at a time (each holds one of the user's few stream slots): the first
  // unfinished statement's; the page is loaded again when it ends, and follows the next.
  for (const article of [running[0]]) {
    const id = article.id.replace("statement-", "");
    const events = new EventSource(`/sessions/${session}/statements/${encodeURIComponent(id)}/events`);
    events.addEventListener("progress", (event) => {
      try {
        const p = JSON.parse(event.data);
        const bar = article.querySelector("progress");
        if (bar) { bar.value = Math.round(p.progress * 100); bar.textContent = `${bar.value}%`; }
        const shown = article.querySelector(".state");
        if (shown) { shown.textContent = p.state; }
        article.dataset.state = p.state;
      } catch (_) { /* a malformed event changes nothing */ }
    });
    events.addEventListener("statement", () => { events.close(); reloadSoon(); });
    events.onerror = () => { events.close(); reloadSoon(); };
  }
}

// The session log's tail, read again every three seconds while the page is in view and the
// session is starting or busy (an idle session's page does not poll: each read is a request
// in the audit trail).
function followSessionLog() {
  const log = document.getElementById("log");
  if (!log) return;
  log.scrollTop = log.scrollHeight;
  if (!log.dataset.session) return;
  const id = encodeURIComponent(log.dataset.session);
  const state = document.getElementById("session-state");
  const active = () => state && ["not_started", "starting", "busy"].includes(state.textContent.trim());
  setInterval(async () => {
    if (document.visibilityState !== "visible" || !active()) return;
    try {
      const page = await api("GET", `/sessions/${id}/log?size=200`);
      if (page && Array.isArray(page.log)) {
        const text = page.log.length ? page.log.join("\n") + "\n" : "";
        if (log.textContent !== text) { log.textContent = text; log.scrollTop = log.scrollHeight; }
      }
    } catch (_) { /* the next round tries again */ }
  }, 3000);
}

document.addEventListener("DOMContentLoaded", () => {
  enhanceRunForm();
  enhanceButtons();
  enhanceBatch();
  followStatements();
  followSessionLog();
});
