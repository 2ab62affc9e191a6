// The console's pages. Every route serves the same HTML; this module reads the path and draws
// the page from the JSON API:
//
//   /flows            runs, with filters and paging
//   /flows/{id}       one run: its graph, atoms, failures, history; live from /api/events
//   /jobs             the board, with filters and paging
//   /jobs/{id}        one job and its outcome
//   /conductors       the fleet, alive or not, and the jobs each holds

import {
  h, badge, progressBar, time, clock, duration, took, ago, brief, jsonDetails, idLink,
  get, notice, clearError, explain, actionButton, initToken, ApiError,
} from "./ui.js";
import { drawGraph, drawTimeline } from "./graph.js";

const PAGE = 50;
const FLOW_STATES = ["PENDING", "RUNNING", "SUCCESS", "FAILURE", "REVERTING", "REVERTED",
  "SUSPENDING", "SUSPENDED", "RESUMING"];
const JOB_STATES = ["UNCLAIMED", "CLAIMED", "PARKED", "COMPLETE", "TRASHED"];
/** Flow states a run ends in: nothing moves it from there but an operator. */
const AT_REST = new Set(["SUCCESS", "REVERTED", "FAILURE"]);
/** A conductor not seen for this long is shown as silent. */
const SILENT_MS = 30_000;
/** When live updates cannot be had, how often a run's page reads it again. */
const POLL_MS = 2000;
const HISTORY_SHOWN = 400;

const main = document.getElementById("main");

function setTitle(...parts) {
  document.title = [...parts, "baton console"].join(" · ");
}

function markNav(section) {
  for (const a of document.querySelectorAll("header.top nav a")) {
    a.classList.toggle("here", a.dataset.nav === section);
  }
}

function failed(err) {
  main.replaceChildren(h("div", { class: "empty error", id: "page-error" }, explain(err)));
}

function table(headers, rows, attrs) {
  return h("table", { class: "grid", ...attrs },
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows));
}

// ---------------------------------------------------------------------------------------
// Lists: a filter form whose values travel in the page's URL, and `after` paging.

/**
 * A filter form. `fields`: `[{name, label, kind: "text"|"select"|"check"|"time", options}]`.
 * Submitting it loads the page again with the filters in the URL (and the first page).
 */
function filterForm(fields, params) {
  const inputs = fields.map((f) => {
    const value = params.get(f.name) || "";
    if (f.kind === "select") {
      const select = h("select", { name: f.name },
        h("option", { value: "" }, "any"),
        f.options.map((o) => h("option", { value: o, selected: o === value }, o)));
      return h("label", {}, f.label, select);
    }
    if (f.kind === "check") {
      return h("label", { class: "check" },
        h("input", { type: "checkbox", name: f.name, value: "true", checked: value === "true" }), f.label);
    }
    if (f.kind === "time") {
      // Shown in the browser's zone, sent as RFC 3339.
      const local = value ? toLocalInput(value) : "";
      return h("label", {}, f.label, h("input", { type: "datetime-local", step: 1, name: f.name, value: local }));
    }
    return h("label", {}, f.label,
      h("input", { type: "text", name: f.name, value, size: f.size || 14, spellcheck: "false", placeholder: f.placeholder }));
  });
  const form = h("form", { class: "filters", method: "get" }, inputs,
    h("button", { type: "submit", class: "primary" }, "Filter"),
    h("a", { href: location.pathname }, "clear"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = new URLSearchParams();
    for (const f of fields) {
      const el = form.elements.namedItem(f.name);
      if (f.kind === "check") {
        if (el.checked) q.set(f.name, "true");
      } else if (f.kind === "time") {
        if (el.value) q.set(f.name, new Date(el.value).toISOString());
      } else if (el.value.trim()) {
        q.set(f.name, el.value.trim());
      }
    }
    const search = q.toString();
    location.assign(search ? `${location.pathname}?${search}` : location.pathname);
  });
  return form;
}

function toLocalInput(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** The query for the API: the page's filters (those in `names`), the page size and cursor. */
function apiQuery(params, names) {
  const q = new URLSearchParams();
  for (const name of names) {
    const value = params.get(name);
    if (value) q.set(name, value);
  }
  q.set("limit", String(PAGE));
  if (params.get("after")) q.set("after", params.get("after"));
  return q;
}

/** Links to the first page and to the next one (after the cursor `after`). */
function pager(params, after, shown) {
  const links = [];
  if (params.get("after")) {
    const first = new URLSearchParams(params);
    first.delete("after");
    links.push(h("a", { href: `${location.pathname}?${first}`, id: "first-page" }, "« first page"));
  }
  if (after) {
    const next = new URLSearchParams(params);
    next.set("after", after);
    links.push(h("a", { href: `${location.pathname}?${next}`, id: "next-page" }, "next page »"));
  }
  return h("div", { class: "pager" }, h("span", { class: "muted" }, `${shown} shown`), links);
}

/** The next page's cursor: from the `Link` header, or the last row of a full page. */
function cursor(answer, rows, idOf) {
  if (answer.after) return answer.after;
  return rows.length >= PAGE && rows.length ? idOf(rows[rows.length - 1]) : null;
}

// ---------------------------------------------------------------------------------------
// /flows

async function flowsPage() {
  setTitle("Flows");
  markNav("flows");
  const params = new URLSearchParams(location.search);
  const fields = [
    { name: "state", label: "state", kind: "select", options: FLOW_STATES },
    { name: "factory", label: "factory" },
    { name: "name", label: "name" },
    { name: "key", label: "job key" },
    { name: "since", label: "created since", kind: "time" },
    { name: "until", label: "created before", kind: "time" },
    { name: "unfinished", label: "unfinished", kind: "check" },
    { name: "stranded", label: "stranded", kind: "check" },
  ];
  const names = fields.map((f) => f.name).concat(["version"]);
  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Flows"), h("span", { class: "sub" }, "runs in the store, newest first")),
    filterForm(fields, params),
    h("div", { id: "list" }, h("p", { class: "muted" }, "Loading…")));
  const answer = await get(`/api/flows?${apiQuery(params, names)}`);
  // `stranded=true` answers `{flow, job, because}` rows; the others are flow records.
  const rows = (answer.data || []).map((r) => (r && r.flow && r.flow.id ? r : { flow: r }));
  const stranded = rows.some((r) => r.because);
  const list = document.getElementById("list");
  if (!rows.length) {
    list.replaceChildren(h("div", { class: "empty" }, params.toString() ? "No run matches these filters." : "No runs yet."));
    return;
  }
  const headers = ["id", "name", "state", "factory", "created", "updated"];
  if (stranded) headers.push("why stranded");
  list.replaceChildren(
    table(headers, rows.map(({ flow, because }) => h("tr", { "data-flow": flow.id },
      h("td", {}, idLink("flow", flow.id)),
      h("td", {}, flow.name),
      h("td", {}, badge(flow.state)),
      h("td", {}, flow.factory ? `${flow.factory.name} v${flow.factory.version}` : h("span", { class: "muted" }, "-")),
      h("td", {}, time(flow.created_at)),
      h("td", { title: time(flow.updated_at) }, ago(flow.updated_at)),
      stranded ? h("td", {}, because || "") : null)), { id: "flows" }),
    pager(params, cursor(answer, rows, (r) => r.flow.id), rows.length));
}

// ---------------------------------------------------------------------------------------
// /flows/{id}

function flowActions(flow, job, reload) {
  const id = flow.id;
  const buttons = [];
  const unfinished = !AT_REST.has(flow.state);
  const jobOpen = job && !["COMPLETE", "TRASHED"].includes(job.state);
  if (unfinished && jobOpen) {
    buttons.push(actionButton("Cancel run", {
      name: "cancel",
      danger: true,
      title: "Cancel this run?",
      text: `The run ${id} stops going forward and what it did is reverted. Its conductor (or the next one to claim it) does it; the page follows.`,
      path: `/api/flows/${id}/cancel`,
      body: { revert: true },
      done: "Cancel requested: the run reverts.",
    }, reload));
    buttons.push(actionButton("Suspend and park", {
      name: "suspend",
      title: "Suspend this run?",
      text: `The run ${id} stops at its next step boundary and its job is parked, nothing reverted, until an operator retries, resumes or reverts it.`,
      path: `/api/flows/${id}/cancel`,
      body: { revert: false },
      done: "Suspend requested.",
    }, reload));
  }
  if (unfinished && (!job || ["PARKED", "COMPLETE", "TRASHED"].includes(job.state))) {
    buttons.push(actionButton("Resume", {
      name: "resume",
      title: "Resume this run?",
      text: `The stranded run ${id} is handed back to the conductors to go on the way it was heading.`,
      path: `/api/flows/${id}/resume`,
      done: "Resume requested.",
    }, reload));
    buttons.push(actionButton("Revert", {
      name: "revert",
      danger: true,
      title: "Revert this run?",
      text: `The stranded run ${id} is handed back to the conductors to undo what it did.`,
      path: `/api/flows/${id}/revert`,
      done: "Revert requested.",
    }, reload));
  }
  if (job) buttons.push(...jobActionButtons(job, reload));
  if (!buttons.length) return null;
  return h("div", { class: "actions" }, h("span", { class: "label" }, "Actions"), buttons);
}

function jobActionButtons(job, reload) {
  const id = job.id;
  const buttons = [];
  if (job.state === "PARKED") {
    buttons.push(actionButton("Retry job", {
      name: "retry",
      title: "Retry this job?",
      text: `The parked job ${id} goes back on the board for a conductor to claim, its run as it stands.`,
      path: `/api/jobs/${id}/retry`,
      done: "The job is back on the board.",
    }, reload));
  }
  if (job.state === "CLAIMED") {
    buttons.push(actionButton("Abandon claim", {
      name: "abandon",
      title: "Abandon this job's claim?",
      text: `The claim on job ${id} is revoked at once, so another conductor takes the job over. Its owner stops at its next write.`,
      path: `/api/jobs/${id}/abandon`,
      done: "The claim is abandoned.",
    }, reload));
  }
  if (!["COMPLETE", "TRASHED"].includes(job.state)) {
    buttons.push(actionButton("Trash job", {
      name: "trash",
      danger: true,
      reason: true,
      title: "Trash this job?",
      text: `Job ${id} is retired and never runs again; its run is left as it stands. Give a reason for the record.`,
      path: `/api/jobs/${id}/trash`,
      body: { force: false },
      done: "The job is trashed.",
    }, reload));
  }
  return buttons;
}

function failuresOf(atom) {
  const list = [];
  for (const round of atom.retry_history || []) list.push(...(round.failures || []));
  if (atom.failure) list.push(atom.failure);
  if (atom.revert_failure) list.push(atom.revert_failure);
  return list;
}

function failureCard(f) {
  return h("div", { class: "failure", "data-atom": f.atom },
    h("div", { class: "what" }, `${f.atom}: ${f.message}`),
    h("div", { class: "meta" },
      `attempt ${f.attempt} · ${f.kind}${f.retryable ? " · retryable" : ""}` +
      `${f.retry_after_ms ? ` · retry after ${duration(f.retry_after_ms)}` : ""}`),
    f.causes && f.causes.length ? h("ul", { class: "causes" }, f.causes.map((c) => h("li", {}, c))) : null);
}

function atomRow(a) {
  let outcome;
  if (a.revert_failure && a.state === "REVERTING") {
    outcome = h("span", { class: "error" }, `revert failed: ${a.revert_failure.message}`);
  } else if (a.result !== null && a.result !== undefined) {
    outcome = jsonDetails(a.result, 48);
  } else if (a.failure) {
    outcome = h("span", { class: "error" }, `failed: ${a.failure.message}`);
  } else {
    outcome = h("span", { class: "muted" }, "-");
  }
  const extra = [];
  if (a.retry_at && ["RETRYING", "REVERTING"].includes(a.state)) extra.push(`retrying at ${time(a.retry_at)}`);
  if (a.deadline && ["RUNNING", "REVERTING"].includes(a.state)) extra.push(`time limit ${time(a.deadline)}`);
  const busy = ["RUNNING", "REVERTING"].includes(a.state);
  return h("tr", { id: `atom-${a.name}`, "data-atom": a.name, "data-state": a.state },
    h("td", {}, h("strong", {}, a.name)),
    h("td", {}, a.kind),
    h("td", {}, badge(a.state)),
    h("td", { class: "num" }, a.attempt, a.round ? h("span", { class: "muted", title: "retry rounds" }, ` (r${a.round})`) : null),
    h("td", {}, time(a.started_at)),
    h("td", {}, a.started_at ? took(a.started_at, busy ? null : a.finished_at) : "-"),
    h("td", {}, busy || (a.progress > 0 && a.progress < 1) ? progressBar(a.progress) : h("span", { class: "muted" }, a.progress >= 1 ? "100%" : "-")),
    h("td", {}, outcome, extra.length ? h("div", { class: "muted" }, extra.join("; ")) : null));
}

function historyList(history) {
  if (!history.length) return h("div", { class: "empty" }, "Nothing recorded yet.");
  const start = new Date(history[0].at).getTime();
  const shown = history.length > HISTORY_SHOWN ? history.slice(-HISTORY_SHOWN) : history;
  const items = shown.map((t) => {
    const c = t.change;
    const atom = c.subject === "atom";
    return h("li", { class: atom ? "atom" : "flow", "data-seq": t.seq },
      h("span", { class: "at" }, clock(t.at)),
      h("span", { class: "since" }, `+${((new Date(t.at).getTime() - start) / 1000).toFixed(2)} s`),
      h("span", { class: "who" }, atom ? c.atom : "flow"),
      h("span", {}, badge(c.from), " → ", badge(c.to)),
      atom ? h("span", { class: "muted" }, `attempt ${c.attempt}`) : null,
      h("span", { class: "muted mono" }, `#${t.seq}`));
  });
  return h("div", {},
    history.length > shown.length
      ? h("p", { class: "muted" }, `The last ${shown.length} of ${history.length} changes:`) : null,
    h("ol", { class: "history", id: "history" }, items));
}

/** The page of one run. Built once; `render` fills its sections again on every update. */
async function flowPage(id) {
  setTitle(`Flow ${id.slice(0, 8)}`);
  markNav("flows");
  const parts = {
    head: h("div", { id: "flow-head" }),
    progress: h("div", { class: "progress-line", id: "flow-progress" }),
    actions: h("div", { id: "flow-actions" }),
    graph: h("div", { class: "panel graph-box", id: "graph" }),
    job: h("div", { id: "flow-job" }),
    atoms: h("div", { id: "atoms" }),
    failures: h("div", { id: "failures" }),
    timeline: h("div", { class: "panel graph-box", id: "timeline" }),
    history: h("div", { id: "history-box" }),
  };
  const live = h("span", { class: "live", id: "live" }, "connecting");
  main.replaceChildren(
    h("div", { class: "panel" }, parts.head, parts.progress, parts.actions),
    h("h2", {}, "Graph"), parts.graph,
    parts.job,
    h("h2", {}, "Atoms"), parts.atoms,
    parts.failures,
    h("h2", {}, "History"), parts.timeline, parts.history);

  let updates = 0;
  const pick = (name) => {
    const row = document.getElementById(`atom-${name}`);
    if (!row) return;
    row.scrollIntoView({ behavior: "smooth", block: "center" });
    row.classList.add("flash");
    setTimeout(() => row.classList.remove("flash"), 1500);
  };

  const render = (view) => {
    const { flow, atoms = [], history = [], graph, job } = view;
    updates += 1;
    document.body.dataset.flowState = flow.state;
    document.body.dataset.updates = String(updates);
    setTitle(`${flow.name} ${flow.state}`, `Flow ${flow.id.slice(0, 8)}`);

    const facts = [
      ["id", h("span", { class: "mono" }, flow.id)],
      ["heading", flow.intention],
      ["factory", flow.factory ? `${flow.factory.name} v${flow.factory.version}` : "-"],
      ["created", time(flow.created_at)],
      ["updated", `${time(flow.updated_at)} (${ago(flow.updated_at)})`],
    ];
    if (flow.deadline) facts.push(["deadline", `${time(flow.deadline.at)}, then ${flow.deadline.then.toLowerCase()}`]);
    if (job) facts.push(["job", h("span", {}, idLink("job", job.id), " ", badge(job.state))]);
    if (flow.inputs && Object.keys(flow.inputs).length) facts.push(["inputs", jsonDetails(flow.inputs, 80)]);
    parts.head.replaceChildren(
      h("div", { class: "page-head" },
        h("h1", {}, flow.name),
        h("span", { id: "flow-state" }, badge(flow.state, true)),
        live),
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));

    const busy = atoms.filter((a) => a.state === "RUNNING" || a.state === "REVERTING").length;
    const busyText = busy ? `, ${busy} busy` : "";
    if (flow.intention === "REVERT") {
      // Undoing: how much of what ran is undone.
      const ran = atoms.filter((a) => a.attempt > 0).length;
      const undone = atoms.filter((a) => a.attempt > 0 && a.state === "REVERTED").length;
      parts.progress.replaceChildren(
        progressBar(ran ? undone / ran : 1, true),
        h("span", { id: "progress-text" }, `${undone} of the ${ran} atoms that ran reverted${busyText}`));
    } else {
      const done = atoms.filter((a) => a.state === "SUCCESS").length;
      parts.progress.replaceChildren(
        progressBar(atoms.length ? done / atoms.length : 0),
        h("span", { id: "progress-text" }, `${done} of ${atoms.length} atoms done${busyText}`));
    }

    parts.actions.replaceChildren(flowActions(flow, job, refresh) || "");

    const records = new Map(atoms.map((a) => [a.name, a]));
    if (graph && graph.nodes && graph.nodes.length) {
      const svg = drawGraph(graph, records, pick);
      parts.graph.replaceChildren(svg);
      fit(svg, parts.graph);
    } else {
      parts.graph.replaceChildren(h("p", { class: "muted" }, "This run recorded no graph (it was created without one)."));
    }

    parts.job.replaceChildren(job ? jobPanel(job) : "");

    parts.atoms.replaceChildren(atoms.length
      ? table(["atom", "kind", "state", "attempt", "started", "took", "progress", "result"], atoms.map(atomRow), { id: "atom-table" })
      : h("div", { class: "empty" }, "No atoms."));

    const failures = atoms.flatMap(failuresOf);
    const jobFailures = job && job.outcome && Array.isArray(job.outcome.failures) ? job.outcome.failures : [];
    parts.failures.replaceChildren(failures.length || jobFailures.length
      ? h("section", { id: "failure-list" }, h("h2", {}, "Failures"),
        failures.map(failureCard),
        !failures.length ? jobFailures.map((text) => h("div", { class: "failure" }, h("div", { class: "what" }, String(text)))) : null)
      : "");

    const end = AT_REST.has(flow.state) ? new Date(flow.updated_at).getTime() : Date.now();
    const gantt = drawTimeline(history, atoms.map((a) => a.name), end);
    parts.timeline.replaceChildren(gantt || h("p", { class: "muted" }, "Nothing recorded yet."));
    parts.history.replaceChildren(historyList(history));
  };

  // One read at a time; an update arriving during a read asks for one more after it.
  let busy = false;
  let again = false;
  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      do {
        again = false;
        const { data } = await get(`/api/flows/${encodeURIComponent(id)}`);
        render(data);
        clearError();
      } while (again);
    } catch (err) {
      notice(explain(err));
    } finally {
      busy = false;
    }
  }

  render(await firstRead(id, parts.head));
  follow(`/api/events?flow=${encodeURIComponent(id)}`, ["flow", "job"], refresh, live);
}

/**
 * The run's first read. A job's run exists once a conductor claims the job: until then (the
 * run is not found, but its job is), the page says so and reads again every `POLL_MS`.
 */
async function firstRead(id, where) {
  const path = `/api/flows/${encodeURIComponent(id)}`;
  for (;;) {
    try {
      return (await get(path)).data;
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 404) throw err;
      // No job either: the run's "not found" is the answer.
      const job = await get(`/api/jobs/${encodeURIComponent(id)}`).then((a) => a.data, () => null);
      if (!job) throw err;
      where.replaceChildren(h("div", { class: "page-head" },
        h("h1", {}, job.name), badge(job.state, true)),
      h("p", { class: "muted", id: "waiting" },
        `The run starts when a conductor claims its job (${job.state.toLowerCase()} now).`));
      await new Promise((resume) => { setTimeout(resume, POLL_MS); });
    }
  }
}

/**
 * Shrinks a drawing a little wider than its box to fit it; a much wider one (a large graph)
 * keeps its size and scrolls, to stay readable.
 */
function fit(svg, box) {
  const style = getComputedStyle(box);
  const room = box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const width = Number(svg.getAttribute("width"));
  const height = Number(svg.getAttribute("height"));
  if (room > 0 && width > room && room / width >= 0.6) {
    svg.setAttribute("width", String(room));
    svg.setAttribute("height", String((height * room) / width));
  }
}

/**
 * Follows the server's events at `url`: each event of `kinds` calls `refresh`. Without
 * server-sent events (an old proxy in between, the stream refused), reads again every
 * `POLL_MS` instead. `live` shows which.
 */
function follow(url, kinds, refresh, live) {
  let polling = null;
  const show = (cls, text) => {
    live.className = `live ${cls}`;
    live.textContent = text;
    live.dataset.mode = cls;
  };
  const poll = () => {
    if (polling) return;
    show("poll", "polling");
    polling = setInterval(refresh, POLL_MS);
  };
  if (!("EventSource" in window)) {
    poll();
    return;
  }
  const source = new EventSource(url);
  for (const kind of kinds) source.addEventListener(kind, () => refresh());
  source.addEventListener("open", () => {
    show("on", "live");
    // Whatever changed while the stream was down.
    refresh();
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) poll();
    else show("", "reconnecting");
  });
  window.addEventListener("pagehide", () => source.close());
}

// ---------------------------------------------------------------------------------------
// /jobs and /jobs/{id}

function jobPanel(job) {
  const facts = [
    ["state", badge(job.state)],
    ["owner", job.owner ? idLink("conductor", job.owner) : h("span", { class: "muted" }, "-")],
    ["attempts", String(job.attempts)],
  ];
  if (job.cancel) facts.push(["cancel requested", job.cancel]);
  if (job.outcome) facts.push(["outcome", outcomeView(job)]);
  return h("section", {}, h("h2", {}, "Job"),
    h("div", { class: "panel" }, h("div", { class: "page-head" }, idLink("job", job.id), h("span", {}, job.name)),
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))));
}

/** A job's outcome: how its run ended, or why it is parked, then the whole JSON. */
function outcomeView(job) {
  const o = job.outcome;
  if (!o || typeof o !== "object") return jsonDetails(o);
  const lines = [];
  if (o.state) lines.push(h("div", {}, "run ended ", badge(o.state)));
  if (o.parked) lines.push(h("div", { class: "error" }, `parked (${o.parked})${o.error ? `: ${o.error}` : ""}`));
  if (o.reason) lines.push(h("div", {}, `reason: ${o.reason}`));
  for (const f of Array.isArray(o.failures) ? o.failures : []) {
    lines.push(h("div", { class: "error" }, `failure: ${typeof f === "string" ? f : brief(f, 200)}`));
  }
  lines.push(jsonDetails(o, 80));
  return h("div", { id: "outcome" }, lines);
}

async function jobsPage() {
  setTitle("Jobs");
  markNav("jobs");
  const params = new URLSearchParams(location.search);
  const fields = [
    { name: "state", label: "state", kind: "select", options: JOB_STATES },
    { name: "key", label: "key" },
    { name: "owner", label: "owner (conductor id)", size: 36 },
  ];
  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Jobs"), h("span", { class: "sub" }, "the board")),
    filterForm(fields, params),
    h("div", { id: "list" }, h("p", { class: "muted" }, "Loading…")));
  const answer = await get(`/api/jobs?${apiQuery(params, fields.map((f) => f.name))}`);
  const jobs = answer.data || [];
  const list = document.getElementById("list");
  if (!jobs.length) {
    list.replaceChildren(h("div", { class: "empty" }, params.toString() ? "No job matches these filters." : "No jobs on the board."));
    return;
  }
  list.replaceChildren(
    table(["id", "name", "factory", "key", "state", "owner", "attempts", "priority", "posted", "updated"],
      jobs.map((j) => h("tr", { "data-job": j.id },
        h("td", {}, idLink("job", j.id)),
        h("td", {}, j.name),
        h("td", {}, j.version ? `${j.factory} v${j.version}` : j.factory),
        h("td", {}, j.key || h("span", { class: "muted" }, "-")),
        h("td", {}, badge(j.state), j.cancel ? h("span", { class: "muted" }, ` cancel: ${j.cancel}`) : null),
        h("td", {}, j.owner ? idLink("conductor", j.owner) : h("span", { class: "muted" }, "-")),
        h("td", { class: "num" }, String(j.attempts)),
        h("td", { class: "num" }, String(j.priority)),
        h("td", {}, time(j.created_at)),
        h("td", { title: time(j.updated_at) }, ago(j.updated_at)))), { id: "jobs" }),
    pager(params, cursor(answer, jobs, (j) => j.id), jobs.length));
}

async function jobPage(id) {
  setTitle(`Job ${id.slice(0, 8)}`);
  markNav("jobs");
  const body = h("div", {});
  const live = h("span", { class: "live", id: "live" }, "connecting");
  main.replaceChildren(body);
  const render = (job) => {
    document.body.dataset.jobState = job.state;
    setTitle(`${job.name} ${job.state}`, `Job ${id.slice(0, 8)}`);
    const facts = [
      ["id", h("span", { class: "mono" }, job.id)],
      ["factory", job.version ? `${job.factory} v${job.version}` : `${job.factory} (version not pinned yet)`],
      ["key", job.key || "-"],
      ["priority", String(job.priority)],
      ["owner", job.owner ? idLink("conductor", job.owner) : "-"],
      ["lease expires", job.lease_expires_at ? time(job.lease_expires_at) : "-"],
      ["attempts", `${job.attempts}${job.stalled_claims ? ` (${job.stalled_claims} in a row without progress)` : ""}`],
      ["fencing token", String(job.token)],
      ["cancel requested", job.cancel || "-"],
      ["deadline", job.deadline ? time(job.deadline) : "-"],
      ["posted", time(job.created_at)],
      ["updated", `${time(job.updated_at)} (${ago(job.updated_at)})`],
      ["run", h("a", { href: `/flows/${encodeURIComponent(job.id)}`, id: "run-link" }, "the run's page")],
    ];
    if (job.supersedes && job.supersedes.length) {
      facts.push(["supersedes", job.supersedes.map((j) => [idLink("job", j), " "])]);
    }
    const buttons = jobActionButtons(job, refresh);
    body.replaceChildren(
      h("div", { class: "panel" },
        h("div", { class: "page-head" }, h("h1", {}, job.name), h("span", { id: "job-state" }, badge(job.state, true)), live),
        h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
        buttons.length ? h("div", { class: "actions" }, h("span", { class: "label" }, "Actions"), buttons) : null),
      h("div", { class: "two" },
        h("section", {}, h("h2", {}, "Outcome"), job.outcome ? outcomeView(job) : h("p", { class: "muted" }, "None yet: the job has not ended.")),
        h("section", {}, h("h2", {}, "Parameters"), h("pre", {}, JSON.stringify(job.params, null, 2)))));
  };
  async function refresh() {
    try {
      render((await get(`/api/jobs/${encodeURIComponent(id)}`)).data);
      clearError();
    } catch (err) {
      notice(explain(err));
    }
  }
  render((await get(`/api/jobs/${encodeURIComponent(id)}`)).data);
  // A job changes with its run: the run's events tell when to read it again.
  follow(`/api/events?flow=${encodeURIComponent(id)}`, ["flow", "job"], refresh, live);
}

// ---------------------------------------------------------------------------------------
// /conductors

async function conductorsPage() {
  setTitle("Conductors");
  markNav("conductors");
  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Conductors"), h("span", { class: "sub" }, "the fleet registered on the board")),
    h("div", { id: "list" }, h("p", { class: "muted" }, "Loading…")));
  const { data } = await get("/api/conductors");
  const fleet = data || [];
  const list = document.getElementById("list");
  if (!fleet.length) {
    list.replaceChildren(h("div", { class: "empty" }, "No conductor is registered."));
    return;
  }
  list.replaceChildren(table(["", "id", "name", "host", "pid", "started", "last seen", "offers", "runs"],
    fleet.map((c) => {
      const alive = typeof c.alive === "boolean" ? c.alive : Date.now() - new Date(c.last_seen).getTime() < SILENT_MS;
      const held = c.runs || [];
      return h("tr", { id: c.id, "data-conductor": c.id },
        h("td", {}, h("span", { class: `state ${alive ? "s-alive" : "s-silent"}` }, alive ? "alive" : "silent")),
        h("td", { class: "mono", title: c.id }, c.id.slice(0, 8)),
        h("td", {}, c.name),
        h("td", {}, c.host),
        h("td", { class: "num" }, String(c.pid)),
        h("td", {}, time(c.started_at)),
        h("td", { title: time(c.last_seen) }, ago(c.last_seen)),
        h("td", {}, offerText(c.offer)),
        h("td", {}, held.length
          ? held.map((j) => [idLink("flow", typeof j === "string" ? j : j.id), " "])
          : h("span", { class: "muted" }, "nothing")));
    }), { id: "conductors" }));
  // Anchors (`/conductors#ID`, from a job's owner) point at a row drawn after the page loaded.
  if (location.hash) {
    const row = document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (row) {
      row.classList.add("flash");
      row.scrollIntoView({ block: "center" });
    }
  }
}

function offerText(offer) {
  if (!offer || typeof offer !== "object") return "-";
  const parts = Object.entries(offer).map(([f, vs]) => `${f} v${[].concat(vs).join(", v")}`);
  return parts.length ? parts.join("; ") : "-";
}

// ---------------------------------------------------------------------------------------

async function route() {
  initToken();
  const path = location.pathname.replace(/\/+$/, "") || "/";
  const flow = /^\/flows\/([^/]+)$/.exec(path);
  const job = /^\/jobs\/([^/]+)$/.exec(path);
  try {
    if (path === "/" || path === "/flows") await flowsPage();
    else if (flow) await flowPage(decodeURIComponent(flow[1]));
    else if (path === "/jobs") await jobsPage();
    else if (job) await jobPage(decodeURIComponent(job[1]));
    else if (path === "/conductors") await conductorsPage();
    else failed(new Error(`No page at ${path}.`));
  } catch (err) {
    failed(err);
  }
  document.body.dataset.ready = "true";
}

route();
