// Neblina researcher console (docs/console.md). One module, no framework, no third party.
// Every value from the API (data, metadata, errors) is rendered with textContent, never as
// markup. The token lives in sessionStorage (this tab only), never in a URL or a cookie.

const TOKEN_KEY = "neblina.token";
const SVG = "http://www.w3.org/2000/svg";
// The API is served by the same origin, under the same prefix as this page (a stage name).
const BASE = window.location.pathname.replace(/\/console\/?$/, "");

const $ = (id) => document.getElementById(id);
const state = { dataset: null, priced: null, pricing: 0, debounce: null };

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Authorization: `Bearer ${token}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(BASE + path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    credentials: "omit",
    cache: "no-store",
    referrerPolicy: "no-referrer",
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const code = body && typeof body.error === "string" ? body.error : "http_" + response.status;
    const message = body && typeof body.message === "string" ? body.message : response.statusText;
    if (code === "unauthorized" || code === "forbidden") {
      signOut(`Signed out: ${message}`);
    }
    throw new ApiError(response.status, code, message);
  }
  return body;
}

// --- sign in / out -------------------------------------------------------------------
function showSignIn(message) {
  $("signin").hidden = false;
  $("app").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("signin-message").textContent = message || "";
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.dataset = null;
  showSignIn(message);
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    const answer = await api("/v1/datasets");
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    $("token").value = "";
    renderDatasets(answer.datasets || []);
  } catch (error) {
    if (sessionStorage.getItem(TOKEN_KEY)) signOut(`Sign-in failed: ${error.message}`);
  }
}

function renderDatasets(datasets) {
  const list = $("datasets");
  clear(list);
  if (datasets.length === 0) list.appendChild(el("li", "You hold no grant on any dataset."));
  for (const dataset of datasets) {
    const item = el("li");
    const button = el("button", dataset.name);
    button.type = "button";
    button.dataset.name = dataset.name;
    button.addEventListener("click", () => selectDataset(dataset));
    item.appendChild(button);
    list.appendChild(item);
  }
}

// --- one dataset ----------------------------------------------------------------------
async function selectDataset(dataset) {
  state.dataset = dataset.name;
  state.priced = null;
  for (const button of $("datasets").querySelectorAll("button")) {
    button.classList.toggle("selected", button.dataset.name === dataset.name);
  }
  $("dataset").hidden = false;
  $("dataset-name").textContent = dataset.name;
  $("dataset-description").textContent = dataset.description || "";
  clear($("dummy-table"));
  clear($("result"));
  clear($("result-accuracy"));
  $("run-message").textContent = "";
  $("confirm").hidden = true;
  await Promise.all([loadMetadata(), refreshBudget(), schedulePrice(0)]);
}

function path(suffix) {
  return `/v1/datasets/${encodeURIComponent(state.dataset)}${suffix}`;
}

function describeColumn(column) {
  const parts = [];
  if (Array.isArray(column.categories)) parts.push(`categories: ${column.categories.join(", ")}`);
  if (column.lower !== undefined || column.upper !== undefined) {
    parts.push(`bounds: [${column.lower}, ${column.upper}]`);
  }
  if (column.nullable) parts.push("nullable");
  if (column.private_id) parts.push("private id");
  return parts.join("; ");
}

async function loadMetadata() {
  const answer = await api(path("/metadata"));
  const meta = answer.metadata || {};
  $("metadata-summary").textContent =
    `${meta.rows} rows; max_ids ${meta.max_ids}; censor_dims ${meta.censor_dims}`;
  const body = $("metadata-columns").querySelector("tbody");
  clear(body);
  for (const [name, column] of Object.entries(meta.columns || {})) {
    const row = el("tr");
    row.appendChild(el("td", name));
    row.appendChild(el("td", column.type));
    row.appendChild(el("td", describeColumn(column)));
    body.appendChild(row);
  }
}

function renderTable(container, table) {
  clear(container);
  if (!table) return;
  if (table.type === "value") {
    container.appendChild(el("code", JSON.stringify(table.value)));
    return;
  }
  const node = el("table");
  const head = el("tr");
  for (const column of table.columns || []) head.appendChild(el("th", column));
  node.appendChild(head);
  for (const record of table.records || []) {
    const row = el("tr");
    for (const column of table.columns || []) {
      const value = record[column];
      row.appendChild(el("td", value === null || value === undefined ? "" : value));
    }
    node.appendChild(row);
  }
  container.appendChild(node);
}

// Accuracy, when the server sends it (docs/api.md, "Accuracy"): per output column, the
// half-width of a confidence interval at `level`, or a reason why there is none.
function renderAccuracy(container, accuracy) {
  clear(container);
  if (!accuracy || typeof accuracy !== "object") return;
  const level = Number(accuracy.level);
  const percent = Number.isFinite(level) ? `${+(level * 100).toPrecision(6)}%` : "?";
  container.appendChild(el("h4", `Accuracy (${percent} confidence intervals)`));
  if (!Array.isArray(accuracy.columns)) {
    container.appendChild(el("p", accuracy.reason || "no accuracy for this query"));
    return;
  }
  const table = el("table");
  table.className = "accuracy";
  const head = el("tr");
  for (const title of ["column", "aggregate", "noise", "scale", "± half-width", "note"]) {
    head.appendChild(el("th", title));
  }
  table.appendChild(head);
  for (const entry of accuracy.columns) {
    const row = el("tr");
    const parts = Array.isArray(entry.components)
      ? entry.components.map((c) => `${c.aggregate}: ±${c.accuracy}`).join("; ")
      : "";
    const cells = [
      entry.column, entry.aggregate, entry.distribution, entry.scale,
      entry.accuracy === null || entry.accuracy === undefined ? "" : `±${entry.accuracy}`,
      [entry.reason, parts].filter(Boolean).join(" — "),
    ];
    for (const cell of cells) row.appendChild(el("td", cell === null || cell === undefined ? "" : cell));
    table.appendChild(row);
  }
  container.appendChild(table);
}

function amount(cost) {
  return `ε ${cost.epsilon}, δ ${cost.delta}`;
}

async function refreshBudget() {
  const [budget, history] = await Promise.all([api(path("/budget")), loadHistory()]);
  let text = `spent ${amount(budget.spent)} of ${amount(budget.initial)}`;
  if (budget.available) text += `; available now ${amount(budget.available)}`;
  if (budget.cap) text += `; dataset cap ${amount(budget.cap.limit)}`;
  $("budget-text").textContent = text;
  drawBurnDown(budget, history);
}

async function loadHistory() {
  const records = [];
  let cursor = null;
  for (let page = 0; page < 10; page += 1) {
    const query = cursor ? `?limit=100&cursor=${encodeURIComponent(cursor)}` : "?limit=100";
    const answer = await api(path(`/queries${query}`));
    records.push(...(answer.queries || []));
    cursor = answer.next_cursor;
    if (!cursor) break;
  }
  renderHistory(records);
  return records;
}

function renderHistory(records) {
  const list = $("history");
  clear(list);
  if (records.length === 0) list.appendChild(el("li", "No query yet."));
  for (const record of records) {
    const item = el("li");
    item.dataset.queryId = record.query_id;
    item.appendChild(
      el("div", `${record.created_at} · ${record.engine} · ${record.state} · ${amount(record.cost)}`, "meta"),
    );
    const request = record.request || {};
    if (request.query) item.appendChild(el("pre", request.query));
    const result = el("div", null, "table");
    renderTable(result, record.result);
    item.appendChild(result);
    const stated = item.appendChild(el("div", null, "table"));
    if (record.accuracy) renderAccuracy(stated, record.accuracy);
    else if (record.state === "done" && record.request) {
      // A record from before records carried their accuracy: the accuracy is a function of
      // the request and the metadata only, so /cost states it again (free, reads no data).
      const button = el("button", "Show accuracy", "show-accuracy");
      button.type = "button";
      button.addEventListener("click", async () => {
        const body = { ...record.request };
        for (const key of ["query_id", "wait", "dummy", "dummy_rows", "dummy_seed", "reuse"]) delete body[key];
        try {
          const answer = await api(path("/cost"), { method: "POST", body });
          renderAccuracy(stated, answer.accuracy);
        } catch (error) {
          stated.textContent = `${error.code}: ${error.message}`;
        }
      });
      stated.appendChild(button);
    }
    if (record.error) item.appendChild(el("p", `${record.error.error}: ${record.error.message}`, "error"));
    list.appendChild(item);
  }
}

// --- the burn-down chart: ε spent over time against the grant and the cap ----------------
function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function drawBurnDown(budget, records) {
  const chart = $("burndown");
  clear(chart);
  const width = 640, height = 240, left = 48, right = 12, top = 12, bottom = 28;
  // Spends that stand (refunded ones were given back), oldest first.
  const spends = records
    .filter((r) => r.state !== "refunded")
    .map((r) => ({ time: Date.parse(r.created_at), epsilon: Number(r.cost.epsilon) }))
    .sort((a, b) => a.time - b.time);
  const grant = Number(budget.initial.epsilon);
  const cap = budget.cap && budget.cap.limit ? Number(budget.cap.limit.epsilon) : null;
  const now = Date.now();
  const first = spends.length ? spends[0].time : now;
  const start = first - Math.max(60_000, (now - first) * 0.05); // the first step shows
  const end = Math.max(now, start + 1);
  let total = 0;
  const points = [[start, 0]];
  for (const spend of spends) {
    points.push([spend.time, total]);
    total += spend.epsilon;
    points.push([spend.time, total]);
  }
  points.push([end, total]);
  const yMax = Math.max(grant, cap || 0, total) * 1.1 || 1;
  const x = (t) => left + ((t - start) / (end - start)) * (width - left - right);
  const y = (e) => top + (1 - e / yMax) * (height - top - bottom);
  chart.appendChild(svg("line", { class: "axis", x1: left, y1: y(0), x2: width - right, y2: y(0) }));
  chart.appendChild(svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: y(0) }));
  chart.appendChild(svg("text", { x: 4, y: y(0) }, "0"));
  chart.appendChild(svg("text", { x: 4, y: y(yMax / 1.1) + 4 }, (yMax / 1.1).toPrecision(3)));
  chart.appendChild(svg("text", { x: left, y: height - 8 }, new Date(start).toISOString().slice(0, 16)));
  chart.appendChild(
    svg("text", { x: width - right, y: height - 8, "text-anchor": "end" }, new Date(end).toISOString().slice(0, 16)),
  );
  chart.appendChild(svg("line", { class: "grant", x1: left, y1: y(grant), x2: width - right, y2: y(grant) }));
  chart.appendChild(svg("text", { x: width - right, y: y(grant) - 3, "text-anchor": "end" }, `grant ε ${budget.initial.epsilon}`));
  if (cap !== null) {
    chart.appendChild(svg("line", { class: "cap", x1: left, y1: y(cap), x2: width - right, y2: y(cap) }));
    chart.appendChild(svg("text", { x: width - right, y: y(cap) - 3, "text-anchor": "end" }, `cap ε ${budget.cap.limit.epsilon}`));
  }
  const d = points.map(([t, e], i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(e).toFixed(1)}`).join(" ");
  chart.appendChild(svg("path", { class: "spent", d, "data-spends": spends.length }));
}

// --- the editor: live price, dummy run, real run behind a confirmation ------------------
function request() {
  const body = { engine: "smartnoise_sql", query: $("sql").value, epsilon: $("epsilon").value.trim(), delta: $("delta").value.trim() };
  return body;
}

function schedulePrice(delay = 300) {
  clearTimeout(state.debounce);
  state.pricing++; // an answer still on its way prices the old request: it is dropped
  state.priced = null;
  $("run-real").disabled = true;
  $("price").textContent = "…";
  return new Promise((resolve) => {
    state.debounce = setTimeout(() => price().then(resolve, resolve), delay);
  });
}

async function price() {
  if (!state.dataset) return;
  const body = request();
  const ticket = ++state.pricing;
  try {
    const answer = await api(path("/cost"), { method: "POST", body });
    if (ticket !== state.pricing) return;
    state.priced = { key: JSON.stringify(body), cost: answer.cost };
    $("price").textContent = amount(answer.cost);
    renderAccuracy($("accuracy"), answer.accuracy);
    $("run-real").disabled = false;
  } catch (error) {
    if (ticket !== state.pricing) return;
    $("price").textContent = `${error.code}: ${error.message}`;
    clear($("accuracy"));
  }
}

function newQueryId() {
  return crypto.randomUUID();
}

async function run(dummy) {
  const body = { ...request(), query_id: newQueryId() };
  if (dummy) body.dummy = true;
  $("run-message").textContent = dummy ? "Running on dummy data…" : "Running…";
  clear($("result"));
  clear($("result-accuracy"));
  try {
    const answer = await api(path("/queries"), { method: "POST", body });
    renderTable($("result"), answer.result);
    renderAccuracy($("result-accuracy"), answer.accuracy);
    $("run-message").textContent = dummy
      ? "Dummy result (free; not from the real data)."
      : `Released; charged ${amount(answer.cost)}.`;
    if (!dummy) await refreshBudget();
  } catch (error) {
    $("run-message").textContent = `${error.code}: ${error.message}`;
  }
}

async function askToRun() {
  const body = request();
  if (!state.priced || state.priced.key !== JSON.stringify(body)) await price();
  if (!state.priced || state.priced.key !== JSON.stringify(body)) return;
  state.confirming = body;
  $("confirm-text").textContent =
    `This query will spend ${amount(state.priced.cost)} of your budget on ${state.dataset}. Run it?`;
  $("confirm").hidden = false;
}

async function confirmRun() {
  $("confirm").hidden = true;
  const body = request();
  if (!state.priced || state.priced.key !== JSON.stringify(body)) return; // edited since
  await run(false);
}

async function previewDummy() {
  const answer = await api(path("/dummy?rows=10&seed=42"));
  renderTable($("dummy-table"), answer.table);
}

function start() {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) signIn(token);
  });
  $("signout").addEventListener("click", () => signOut("Signed out."));
  for (const id of ["sql", "epsilon", "delta"]) $(id).addEventListener("input", () => schedulePrice());
  $("run-dummy").addEventListener("click", () => run(true));
  $("run-real").addEventListener("click", askToRun);
  $("confirm-yes").addEventListener("click", confirmRun);
  $("confirm-no").addEventListener("click", () => { $("confirm").hidden = true; });
  $("dummy-preview").addEventListener("click", () => previewDummy().catch((e) => {
    $("dummy-table").textContent = `${e.code}: ${e.message}`;
  }));
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else showSignIn("");
}

start();
