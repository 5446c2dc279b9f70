// The auditq dashboard: polls GET /api/v1/status and draws it. No library, no build step.
// Every value from the API reaches the page through textContent, never as markup.
"use strict";

const API = "/api/v1";
const SVG = "http://www.w3.org/2000/svg";
const PRIORITIES = ["interactive", "bulk"];
const FINISHED = ["succeeded", "cancelled", "failed"]; // bottom to top in the chart
const KEYS = document.querySelector('meta[name="auditq-auth"]').content === "keys";

// `?every=2` polls every 2 s (at least 1); 5 s otherwise.
const REFRESH_MS = Math.max(1, Number(new URLSearchParams(location.search).get("every")) || 5) * 1000;

const $ = (id) => document.getElementById(id);

class SignInNeeded extends Error {}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name === "role" || name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  node.append(...children);
  return node;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

function show(section) {
  for (const id of ["sign-in", "overview", "audit"]) $(id).hidden = id !== section;
}

async function problemOf(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || response.statusText;
  } catch {
    return response.statusText || `HTTP ${response.status}`;
  }
}

// A GET of the API; the dashboard's cookie goes with it (same origin), a key never does.
async function getJson(path) {
  const response = await fetch(API + path, {
    headers: { Accept: "application/json" },
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 401 || response.status === 403) {
    throw new SignInNeeded(await problemOf(response));
  }
  if (!response.ok) throw new HttpError(response.status, await problemOf(response));
  return response.json();
}

// --- Formatting ---------------------------------------------------------------------------

const integer = new Intl.NumberFormat("en");

function duration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function clock(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function ago(iso, now) {
  return `${duration(Math.max(0, (Date.parse(now) - Date.parse(iso)) / 1000))} ago`;
}

function percent(part, whole) {
  return whole ? `${((100 * part) / whole).toFixed(1)}%` : "–";
}

// --- Overview -----------------------------------------------------------------------------

function drawTiles(status) {
  const { queue, throughput } = status;
  $("queued").textContent = integer.format(queue.queued);
  const oldest = Math.max(...PRIORITIES.map((p) => queue.oldest_age_seconds[p] || 0));
  $("oldest").textContent = queue.queued ? `oldest ${duration(oldest)}` : "none waiting";
  $("running").textContent = integer.format(status.audits_running);
  const batches = status.batches_running;
  $("batches-running").textContent = `${integer.format(batches)} ${batches === 1 ? "batch" : "batches"} in progress`;
  $("workers").textContent = status.workers_alive === null ? "?" : integer.format(status.workers_alive);
  $("workers").classList.toggle("alarm", status.workers_alive === 0);
  const recent = throughput.last_5_minutes;
  $("finished-5m").textContent = integer.format(recent.total);
  $("rate-5m").textContent = `${(recent.total / 5).toFixed(1)} / min, ${integer.format(recent.failed)} failed`;
  const hour = throughput.last_hour;
  $("failed-hour").textContent = integer.format(hour.failed);
  $("failure-rate").textContent = `${percent(hour.failed, hour.total)} of ${integer.format(hour.total)} finished`;
}

function drawQueue(queue) {
  const byTenant = new Map();
  for (const { tenant, priority, queued } of queue.by_priority_and_tenant) {
    if (!byTenant.has(tenant)) byTenant.set(tenant, {});
    byTenant.get(tenant)[priority] = queued;
  }
  const rows = [...byTenant.keys()].sort().map((tenant) => {
    const counts = byTenant.get(tenant);
    const cells = PRIORITIES.map((priority) =>
      el("td", {
        class: "num",
        text: integer.format(counts[priority] || 0),
        "data-tenant": tenant,
        "data-priority": priority,
      }),
    );
    const total = PRIORITIES.reduce((sum, priority) => sum + (counts[priority] || 0), 0);
    return el("tr", {}, el("th", { text: tenant }), ...cells, el("td", { class: "num", text: integer.format(total) }));
  });
  $("queue").tBodies[0].replaceChildren(...rows);
  for (const priority of PRIORITIES) {
    $(`oldest-${priority}`).textContent = duration(queue.oldest_age_seconds[priority] || 0);
  }
  $("queue-empty").hidden = rows.length > 0;
}

function drawFailures(failures, now) {
  const items = failures.map((failure) =>
    el(
      "li",
      { "data-code": failure.code },
      el(
        "div",
        { class: "code-line" },
        el("code", { text: failure.code }),
        el("span", { class: "count", text: integer.format(failure.last_hour) }),
        el("span", { class: "muted", text: ` (${integer.format(failure.last_5_minutes)} in the last 5 min)` }),
      ),
      el(
        "ul",
        { class: "latest" },
        ...failure.latest.map((audit) =>
          el(
            "li",
            {},
            el("a", { href: `/dashboard/audits/${audit.id}`, text: audit.subject }),
            el("span", { class: "muted", text: ` ${audit.tenant}, ${ago(audit.finished_at, now)}` }),
          ),
        ),
      ),
    ),
  );
  $("failures").replaceChildren(...items);
  $("failures-empty").hidden = items.length > 0;
}

function progressBar(counts) {
  const bar = el("div", { class: "progress", role: "progressbar" });
  const done = counts.succeeded + counts.failed + counts.cancelled;
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", String(counts.total));
  bar.setAttribute("aria-valuenow", String(done));
  for (const part of ["succeeded", "failed", "cancelled", "running"]) {
    const segment = el("span", { class: part });
    segment.style.width = `${counts.total ? (100 * counts[part]) / counts.total : 0}%`;
    bar.append(segment);
  }
  return bar;
}

function drawBatches(batches) {
  const items = batches.map((batch) => {
    const c = batch.counts;
    const done = c.succeeded + c.failed + c.cancelled;
    return el(
      "li",
      { "data-batch": batch.id },
      el(
        "div",
        { class: "batch-line" },
        el("a", { href: `${API}/batches/${batch.id}`, text: batch.name || batch.id }),
        el("span", { class: "muted", text: ` ${batch.tenant}` }),
        el("span", { class: "done", text: `${integer.format(done)} / ${integer.format(c.total)}` }),
      ),
      progressBar(c),
      el("div", {
        class: "muted small",
        text: `${c.succeeded} succeeded, ${c.failed} failed, ${c.cancelled} cancelled, ${c.running} running, ${c.queued} queued`,
      }),
    );
  });
  $("batches").replaceChildren(...items);
  $("batches-empty").hidden = items.length > 0;
}

// --- The chart: bars of audits finished per minute, and the failure rate as a line --------

const CHART = { width: 760, height: 200, left: 44, right: 44, top: 10, bottom: 24 };

function roundUp(value) {
  if (value <= 5) return 5;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * magnitude).find((step) => step >= value);
}

function drawChart(minutes) {
  const { width, height, left, right, top, bottom } = CHART;
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const most = roundUp(Math.max(0, ...minutes.map((m) => m.total)));
  const slot = plotWidth / minutes.length;
  const y = (count) => top + plotHeight - (plotHeight * count) / most;
  const parts = [
    svg("line", { x1: left, x2: width - right, y1: y(0), y2: y(0), class: "axis" }),
    svg("text", { x: left - 6, y: y(most) + 4, class: "tick end" }, `${most}/min`),
    svg("text", { x: left - 6, y: y(0), class: "tick end" }, "0"),
    svg("text", { x: width - right + 6, y: top + 4, class: "tick" }, "100%"),
    svg("text", { x: width - right + 6, y: y(0), class: "tick" }, "0%"),
    svg("text", { x: left, y: height - 6, class: "tick" }, "60 min ago"),
    svg("text", { x: left + plotWidth / 2, y: height - 6, class: "tick middle" }, "30 min ago"),
    svg("text", { x: width - right, y: height - 6, class: "tick end" }, "now"),
  ];
  // The failure rate of each minute that had work; a minute without any breaks the line.
  const runs = [[]];
  minutes.forEach((minute, index) => {
    const x = left + index * slot;
    let base = 0;
    const bar = svg("g", { class: "minute" });
    for (const status of FINISHED) {
      const count = minute[status];
      if (!count) continue;
      const height = y(base) - y(base + count);
      bar.append(svg("rect", { x: x + 1, width: Math.max(1, slot - 2), y: y(base + count), height, class: status }));
      base += count;
    }
    const label = `${clock(minute.minute)}: ${minute.succeeded} succeeded, ${minute.failed} failed, ${minute.cancelled} cancelled`;
    bar.append(svg("title", {}, label));
    parts.push(bar);
    if (!minute.total) {
      runs.push([]);
      return;
    }
    const point = [x + slot / 2, top + plotHeight * (1 - minute.failed / minute.total)];
    runs[runs.length - 1].push(point);
    parts.push(svg("circle", { cx: point[0], cy: point[1], r: 2, class: "rate-point" }));
  });
  for (const run of runs.filter((points) => points.length > 1)) {
    parts.push(svg("polyline", { points: run.map((point) => point.join(",")).join(" "), class: "rate" }));
  }
  $("chart").replaceChildren(...parts);
}

function drawOverview(status) {
  drawTiles(status);
  drawChart(status.throughput.per_minute);
  drawQueue(status.queue);
  drawFailures(status.failures, status.generated_at);
  drawBatches(status.batches);
}

// --- An audit, with its findings and the evidence they quote -------------------------------

function fact(list, name, value) {
  if (value === null || value === undefined || value === "") return;
  list.append(el("dt", { text: name }), el("dd", { text: String(value) }));
}

function drawFacts(audit) {
  const facts = $("audit-facts");
  facts.replaceChildren();
  fact(facts, "id", audit.id);
  fact(facts, "status", audit.status);
  fact(facts, "tenant", audit.tenant);
  fact(facts, "priority", audit.priority);
  fact(facts, "model", audit.model);
  fact(facts, "rubric", audit.rubric ? `${audit.rubric} v${audit.rubric_version}` : null);
  fact(facts, "batch", audit.batch_id);
  fact(facts, "attempts", audit.attempts);
  fact(facts, "created", new Date(audit.created_at).toLocaleString());
  fact(facts, "finished", audit.finished_at ? new Date(audit.finished_at).toLocaleString() : null);
  fact(facts, "tokens", audit.usage ? integer.format(audit.usage.total_tokens) : null);
  facts.dataset.status = audit.status;
}

function drawFindings(audit) {
  const descriptions = new Map(audit.criteria.map((c) => [c.id, c.description]));
  const findings = audit.result.findings.map((finding) =>
    el(
      "li",
      { class: "finding", "data-criterion": finding.criterion_id },
      el(
        "div",
        { class: "finding-head" },
        el("code", { text: finding.criterion_id }),
        el("span", { class: `badge ${finding.verdict}`, text: finding.verdict }),
        el("span", { class: "muted", text: finding.verdict === "not_applicable" ? "" : ` score ${finding.score}` }),
      ),
      el("p", { class: "muted small", text: descriptions.get(finding.criterion_id) || "" }),
      el("p", { text: finding.rationale }),
      ...finding.evidence.map((quote) => el("blockquote", { class: "evidence", text: quote })),
    ),
  );
  $("findings").replaceChildren(...findings);
}

// The content with every quoted passage in a <mark>, built from text nodes only.
function drawContent(content, quotes) {
  const spans = [];
  for (const quote of quotes) {
    let at = quote ? content.indexOf(quote) : -1;
    while (at !== -1) {
      spans.push([at, at + quote.length]);
      at = content.indexOf(quote, at + quote.length);
    }
  }
  spans.sort((a, b) => a[0] - b[0]);
  const nodes = [];
  let position = 0;
  for (const [start, end] of spans) {
    if (end <= position) continue;
    const from = Math.max(start, position);
    nodes.push(document.createTextNode(content.slice(position, from)), el("mark", { text: content.slice(from, end) }));
    position = end;
  }
  nodes.push(document.createTextNode(content.slice(position)));
  $("audit-content").replaceChildren(...nodes);
  $("content-title").textContent = spans.length ? "Content, with the quoted evidence marked" : "Content";
}

function drawAudit(audit) {
  document.title = `${audit.subject} · auditq`;
  $("audit-subject").textContent = audit.subject;
  drawFacts(audit);
  $("audit-error").hidden = !audit.error;
  if (audit.error) $("audit-error").textContent = `${audit.error.code}: ${audit.error.message}`;
  $("audit-result").hidden = !audit.result;
  const quotes = audit.result ? audit.result.findings.flatMap((f) => f.evidence) : [];
  if (audit.result) {
    const result = audit.result;
    $("audit-score").textContent = result.score === null ? "" : result.score.toFixed(1);
    $("audit-verdict").textContent = result.verdict;
    $("audit-verdict").className = `badge ${result.verdict}`;
    $("audit-summary").textContent = result.summary;
    drawFindings(audit);
  }
  drawContent(audit.content, quotes);
}

// --- Polling and signing in ------------------------------------------------------------------

let timer = null;

function auditId() {
  const match = location.pathname.match(/^\/dashboard\/audits\/([^/]+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

async function refresh() {
  clearTimeout(timer);
  const id = auditId();
  try {
    if (id) {
      const audit = await getJson(`/audits/${encodeURIComponent(id)}`);
      drawAudit(audit);
      show("audit");
      if (audit.status !== "queued" && audit.status !== "running") {
        $("freshness").textContent = `audit ${audit.status}`;
        return;
      }
    } else {
      drawOverview(await getJson("/status"));
      show("overview");
    }
    $("freshness").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("freshness").classList.remove("error");
    $("sign-out").hidden = !KEYS;
  } catch (error) {
    if (error instanceof SignInNeeded) {
      askForKey(error.message);
      return;
    }
    if (id && error instanceof HttpError && error.status === 404) {
      $("audit-subject").textContent = error.message;
      $("audit-facts").replaceChildren();
      show("audit");
      $("freshness").textContent = "no such audit";
      return;
    }
    $("freshness").textContent = `not updated: ${error.message}`;
    $("freshness").classList.add("error");
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

function askForKey(why) {
  $("sign-in-why").textContent = why;
  $("sign-out").hidden = true;
  $("freshness").textContent = "signed out";
  show("sign-in");
  $("key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  const response = await fetch("/dashboard/session", {
    method: "POST",
    body: new URLSearchParams({ key }),
    credentials: "same-origin",
  });
  if (!response.ok) {
    $("sign-in-error").textContent = await problemOf(response);
    return;
  }
  $("key").value = "";
  $("sign-in-error").textContent = "";
  refresh();
}

async function signOut() {
  clearTimeout(timer);
  await fetch("/dashboard/session", { method: "DELETE", credentials: "same-origin" });
  askForKey("Signed out. An admin key opens the dashboard again.");
}

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", signOut);
refresh();
