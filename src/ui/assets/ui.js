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

// While the session starts or a statement runs, the page refreshes itself every two seconds
// (not while the user is typing code).
function refreshWhileActive() {
  const state = document.getElementById("session-state");
  if (!state) return;
  const active = ["not_started", "starting", "busy"].includes(state.textContent.trim()) ||
    document.querySelector('.statement[data-state="running"], .statement[data-state="waiting"], .statement[data-state="cancelling"]');
  if (!active) return;
  setTimeout(() => {
    const code = document.getElementById("code");
    const typing = code && (code.value !== "" || document.activeElement === code);
    if (typing) { refreshWhileActive(); } else { location.reload(); }
  }, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  enhanceRunForm();
  enhanceButtons();
  refreshWhileActive();
});
