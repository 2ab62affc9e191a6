// What every page shares: building elements, formatting, reading the JSON API, and the
// confirmation dialog that sends an action with the admin token.
//
// Text from the API only ever enters the page as text nodes or attribute values (never as
// HTML), so a flow named `<script>` is shown, not run.

const SVG_NS = "http://www.w3.org/2000/svg";

/** An element: `h("a", {href: "/x", class: "y"}, "text", child, [more])`. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, as `h`. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** A state's badge, coloured as the command line colours it. */
export function badge(state, big) {
  const text = state || "-";
  return h("span", { class: `state s-${text}${big ? " big" : ""}`, "data-state": text }, text);
}

/** A progress bar for a fraction from 0 to 1 (`undo`: of an undoing, drawn orange). */
export function progressBar(fraction, undo) {
  const f = Math.max(0, Math.min(1, Number(fraction) || 0));
  const fill = h("span");
  // CSSOM, not a style attribute: allowed by the Content-Security-Policy.
  fill.style.width = `${(f * 100).toFixed(1)}%`;
  const cls = undo ? " undo" : f >= 1 ? " done" : "";
  return h("div", { class: `progress${cls}`, title: `${Math.round(f * 100)}%` }, fill);
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** A time as `YYYY-MM-DD HH:MM:SS` in the browser's zone; `-` for none. */
export function time(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A time of day with milliseconds, for the history. */
export function clock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** A duration in milliseconds, short: `820 ms`, `4.2 s`, `3 min 5 s`, `2 h 10 min`. */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "-";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const sec = Math.round(ms / 1000);
  if (sec < 3600) return `${Math.floor(sec / 60)} min ${sec % 60} s`;
  return `${Math.floor(sec / 3600)} h ${Math.floor((sec % 3600) / 60)} min`;
}

/** How long from `from` to `to` (or to now), as `duration` writes it. */
export function took(from, to) {
  if (!from) return "-";
  const end = to ? new Date(to) : new Date();
  return duration(end - new Date(from));
}

/** How long ago, roughly: `4 s ago`. */
export function ago(iso) {
  if (!iso) return "-";
  const ms = Date.now() - new Date(iso).getTime();
  return ms < 0 ? "just now" : `${duration(ms)} ago`;
}

/** A JSON value shown short, in one line (`max` characters). */
export function brief(value, max = 60) {
  if (value === undefined || value === null) return "";
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** A JSON value, short, that opens to show all of it. */
export function jsonDetails(value, max = 60) {
  if (value === undefined || value === null) return h("span", { class: "muted" }, "-");
  const whole = JSON.stringify(value, null, 2);
  const short = brief(value, max);
  if (short.length >= whole.length) return h("code", {}, short);
  return h("details", {}, h("summary", {}, h("code", {}, short)), h("pre", {}, whole));
}

/** A link to a flow, a job or a conductor by id, shortened to its first 8 characters. */
export function idLink(kind, id) {
  if (!id) return h("span", { class: "muted" }, "-");
  const href = kind === "conductor" ? `/conductors#${id}` : `/${kind}s/${encodeURIComponent(id)}`;
  return h("a", { href, class: "mono", title: id }, String(id).slice(0, 8));
}

/** An error the API answered with (`{"error", "code"}`) or a network failure. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function answer(response) {
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body && typeof body.error === "string"
      ? body.error
      : `the server answered ${response.status} ${response.statusText}`;
    throw new ApiError(response.status, (body && body.code) || "http_error", message);
  }
  return body;
}

/** The `rel="next"` URL of a `Link` header, if any. */
function nextLink(response) {
  const link = response.headers.get("Link");
  if (!link) return null;
  const match = /<([^>]+)>\s*;\s*rel="?next"?/.exec(link);
  return match ? match[1] : null;
}

/**
 * GETs `path` from the API: `{data, next}`, `next` being the `after` cursor of the next page
 * when the server says there is one.
 */
export async function get(path) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "network", `the console cannot be reached (${e.message})`);
  }
  const data = await answer(response);
  const next = nextLink(response);
  let after = null;
  if (next) {
    after = new URL(next, location.origin).searchParams.get("after");
  }
  return { data, after };
}

/** POSTs an action with the admin token; answers the API's JSON. */
export async function post(path, body, token) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "network", `the console cannot be reached (${e.message})`);
  }
  return answer(response);
}

/** Shows a message above the page (`ok` for a success, else an error), or hides it. */
export function notice(message, ok) {
  const el = document.getElementById("notice");
  if (!message) {
    el.hidden = true;
    return;
  }
  el.textContent = message;
  el.className = ok ? "notice ok" : "notice";
  el.dataset.kind = ok ? "ok" : "error";
  el.hidden = false;
}

/** Hides the message above the page if it is an error (a read that failed and now works). */
export function clearError() {
  const el = document.getElementById("notice");
  if (el.dataset.kind === "error") el.hidden = true;
}

/** What an API error means for the reader. */
export function explain(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  switch (err.code) {
    case "unauthorized":
      return `Refused: ${err.message}. Type the admin token the console was started with.`;
    case "read_only":
      return `Refused: ${err.message}. This console was started without an admin token, so it is read-only.`;
    default:
      return err.message;
  }
}

// The admin token: typed into the dialog, kept for the tab in session storage.
const TOKEN_KEY = "baton.admin-token";

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function storeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage refused (private mode): the token is typed again next time.
  }
  showTokenState();
}

/** Shows, in the top bar, whether a token is kept for this tab. */
export function showTokenState() {
  const state = document.getElementById("token-state");
  if (state) state.hidden = !storedToken();
}

export function initToken() {
  const forget = document.getElementById("token-forget");
  if (forget) forget.addEventListener("click", () => storeToken(""));
  showTokenState();
}

/**
 * Asks for confirmation of an action, then POSTs it with the token typed (or kept): resolves
 * with the API's answer once it succeeded, or with `null` if the operator went back.
 *
 * `action`: `{title, text, path, body?, reason?: true}`; with `reason`, the dialog asks for
 * one and sends it as the body's `reason`.
 */
export function confirmAction(action) {
  const dialog = document.getElementById("confirm");
  const form = document.getElementById("confirm-form");
  const tokenInput = document.getElementById("confirm-token");
  const reasonRow = document.getElementById("confirm-reason-row");
  const reasonInput = document.getElementById("confirm-reason");
  const error = document.getElementById("confirm-error");
  const yes = document.getElementById("confirm-yes");
  const no = document.getElementById("confirm-no");

  document.getElementById("confirm-title").textContent = action.title;
  document.getElementById("confirm-text").textContent = action.text;
  yes.textContent = action.button || "Confirm";
  tokenInput.value = storedToken();
  reasonRow.hidden = !action.reason;
  reasonInput.value = "";
  error.hidden = true;
  error.textContent = "";
  yes.disabled = false;

  return new Promise((resolve) => {
    const done = (result) => {
      form.removeEventListener("submit", onSubmit);
      no.removeEventListener("click", onBack);
      dialog.removeEventListener("cancel", onBack);
      if (dialog.open) dialog.close();
      resolve(result);
    };
    const onBack = (event) => {
      event.preventDefault();
      done(null);
    };
    const onSubmit = async (event) => {
      event.preventDefault();
      const token = tokenInput.value.trim();
      let body = action.body;
      if (action.reason) body = { ...(body || {}), reason: reasonInput.value.trim() };
      yes.disabled = true;
      error.hidden = true;
      try {
        const result = await action.send(body, token);
        if (token) storeToken(token);
        done(result === undefined ? {} : result);
      } catch (err) {
        // A token the server refused is not kept.
        if (err instanceof ApiError && err.code === "unauthorized") storeToken("");
        error.textContent = explain(err);
        error.hidden = false;
        yes.disabled = false;
      }
    };
    form.addEventListener("submit", onSubmit);
    no.addEventListener("click", onBack);
    dialog.addEventListener("cancel", onBack);
    dialog.showModal();
    (tokenInput.value ? yes : tokenInput).focus();
  });
}

/** A button that runs `action` (see `confirmAction`) and then `after(result)`. */
export function actionButton(label, action, after) {
  return h("button", {
    type: "button",
    class: action.danger ? "danger" : "",
    "data-action": action.name,
    onclick: async () => {
      const result = await confirmAction({
        ...action,
        send: (body, token) => post(action.path, body, token),
      });
      if (result !== null) {
        notice(action.done || `${label}: done`, true);
        if (after) after(result);
      }
    },
  }, label);
}
