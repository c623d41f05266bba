// leadflow dashboard: calls the analytics reports with the API key typed in, draws one
// chart per report (Chart.js, vendored) and every table with a CSV download.
// What was drawn is kept in window.leadflow (read by the browser test and handy to debug).
"use strict";

const REPORTS = [
  ["monthly", "Monthly sales"],
  ["channels", "Channels and sources"],
  ["campaigns", "Campaigns"],
  ["reps", "Per-rep funnel"],
  ["speed", "Speed to lead"],
  ["losses", "Losses"],
  ["walk-ins", "Walk-ins and satisfaction"],
  ["nurture", "Nurture"],
  ["forecast", "Funnel and forecast"],
];
const FILTERS = ["tz", "pool", "rep", "source", "channel", "campaign"];
const COLORS = ["#3566d6", "#e0793a", "#2f9e6e", "#c2417a", "#8a5cd1", "#c9a227", "#4aa3b5", "#7a7f8c"];

window.leadflow = { ready: false, reports: {}, charts: {}, errors: [] };
const chartObjects = {};

function $(id) { return document.getElementById(id); }

function params() {
  const search = new URLSearchParams({ month: $("month").value });
  for (const name of FILTERS) {
    const value = $(name).value.trim();
    if (value) search.set(name, value);
  }
  return search;
}

function money(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "object") {
    const parts = Object.entries(value).map(([cur, v]) => `${cur} ${Number(v).toLocaleString(undefined, { maximumFractionDigits: 2 })}`);
    return parts.length ? parts.join("; ") : "0";
  }
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(value < 1 && value > -1 ? 4 : 2);
  return String(value);
}

function chartSpec(name, report) {
  const t = report.tables;
  const rows = (table) => (t[table] ? t[table].rows : []);
  const bar = (labels, datasets, type = "bar") => ({ type, labels, datasets });
  switch (name) {
    case "monthly": {
      const wanted = ["phone_inquiries", "online_inquiries", "walk_in_inquiries", "visits_reserved", "visits_walk_in", "conversions"];
      const f = report.figures;
      return bar(wanted, [
        { label: "this period", data: wanted.map((k) => f[k]) },
        { label: "previous period", data: wanted.map((k) => f.previous[k]) },
      ]);
    }
    case "channels":
      return bar(rows("channels").map((r) => r.channel), [
        { label: "inquiries", data: rows("channels").map((r) => r.inquiries) },
        { label: "new leads", data: rows("channels").map((r) => r.leads_received) },
        { label: "converted", data: rows("channels").map((r) => r.leads_converted) },
      ]);
    case "campaigns":
      return bar(rows("campaigns").map((r) => r.name), [
        { label: "leads", data: rows("campaigns").map((r) => r.leads) },
        { label: "opportunities", data: rows("campaigns").map((r) => r.opportunities) },
        { label: "converted", data: rows("campaigns").map((r) => r.leads_converted) },
      ]);
    case "reps":
      return bar(rows("reps").map((r) => r.rep), [
        { label: "calls", data: rows("reps").map((r) => r.calls) },
        { label: "visit bookings", data: rows("reps").map((r) => r.visit_bookings) },
        { label: "consultations", data: rows("reps").map((r) => r.consultations) },
        { label: "sales", data: rows("reps").map((r) => r.sales) },
      ]);
    case "speed":
      return bar(rows("distribution").map((r) => r.bucket), [
        { label: "first contacts", data: rows("distribution").map((r) => r.leads) },
      ]);
    case "losses":
      return bar(rows("by_level").map((r) => `${r.level} ${r.meaning}`), [
        { label: "losses", data: rows("by_level").map((r) => r.losses) },
      ], "doughnut");
    case "walk-ins":
      return bar(rows("satisfaction").map((r) => String(r.score)), [
        { label: "responses", data: rows("satisfaction").map((r) => r.responses) },
      ]);
    case "nurture":
      return bar(rows("steps").map((r) => `${r.sequence} #${r.step}`), [
        { label: "sent", data: rows("steps").map((r) => r.sent) },
        { label: "delivered", data: rows("steps").map((r) => r.delivered) },
        { label: "opened", data: rows("steps").map((r) => r.opened) },
        { label: "clicked", data: rows("steps").map((r) => r.clicked) },
        { label: "replied", data: rows("steps").map((r) => r.replied) },
      ]);
    case "forecast":
      return bar(rows("funnel").map((r) => r.stage), [
        { label: "leads reaching the stage", data: rows("funnel").map((r) => r.leads) },
      ]);
    default:
      return null;
  }
}

function drawChart(name, canvas, spec) {
  if (chartObjects[name]) chartObjects[name].destroy();
  const datasets = spec.datasets.map((d, i) => ({
    ...d,
    backgroundColor: spec.type === "doughnut" ? COLORS : COLORS[i % COLORS.length],
  }));
  chartObjects[name] = new Chart(canvas, {
    type: spec.type,
    data: { labels: spec.labels, datasets },
    options: { responsive: true, maintainAspectRatio: false, animation: false },
  });
  const drawn = chartObjects[name];
  window.leadflow.charts[name] = {
    type: spec.type,
    labels: drawn.data.labels.slice(),
    datasets: drawn.data.datasets.map((d) => ({ label: d.label, data: d.data.slice() })),
  };
}

function element(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

async function downloadCsv(name, table) {
  const search = params();
  search.set("format", "csv");
  search.set("table", table);
  const response = await fetch(`/v1/reports/${name}?${search}`, { headers: { "X-API-Key": $("key").value } });
  if (!response.ok) { showError(`${name}/${table}: ${response.status} ${await response.text()}`); return; }
  const blob = await response.blob();
  const link = element("a", { href: URL.createObjectURL(blob), download: `${name}_${table}_${$("month").value}.csv` });
  document.body.appendChild(link);
  link.click();
  link.remove();
}

function renderReport(name, title, report) {
  const section = element("section", { class: "report", id: `report-${name}` });
  section.appendChild(element("h2", {}, title));
  const figures = element("div", { class: "figures" });
  for (const [key, value] of Object.entries(report.figures)) {
    if (key === "previous" || (typeof value === "object" && value !== null && !Object.keys(value).every((k) => /^[A-Z]{3}$/.test(k)))) continue;
    const box = element("div", { class: "figure", "data-figure": key });
    box.appendChild(element("b", {}, money(value)));
    box.appendChild(document.createTextNode(key.replaceAll("_", " ")));
    figures.appendChild(box);
  }
  section.appendChild(figures);
  const spec = chartSpec(name, report);
  if (spec) {
    const holder = element("div", { class: "chart" });
    const canvas = element("canvas", { id: `chart-${name}`, "aria-label": `${title} chart`, role: "img" });
    holder.appendChild(canvas);
    section.appendChild(holder);
    drawChart(name, canvas, spec);
  }
  for (const [tableName, table] of Object.entries(report.tables)) {
    const head = element("div", { class: "table-head" });
    head.appendChild(element("h3", {}, table.title));
    const button = element("button", { class: "csv", type: "button", "data-report": name, "data-table": tableName }, "CSV");
    button.addEventListener("click", () => downloadCsv(name, tableName));
    head.appendChild(button);
    section.appendChild(head);
    const grid = element("table", { "data-table": `${name}.${tableName}` });
    const header = element("tr");
    for (const column of table.columns) header.appendChild(element("th", {}, column));
    grid.appendChild(header);
    for (const row of table.rows) {
      const line = element("tr");
      for (const column of table.columns) line.appendChild(element("td", { "data-column": column }, money(row[column])));
      grid.appendChild(line);
    }
    section.appendChild(grid);
  }
  const notes = element("ul", { class: "notes" });
  for (const note of report.notes) notes.appendChild(element("li", {}, note));
  section.appendChild(notes);
  return section;
}

function showError(message) {
  window.leadflow.errors.push(message);
  $("status").textContent = message;
  $("status").className = "error";
}

async function load(event) {
  if (event) event.preventDefault();
  window.leadflow.ready = false;
  localStorage.setItem("leadflow.key", $("key").value);
  $("status").textContent = "loading…";
  $("status").className = "";
  const main = $("reports");
  const search = params();
  const headers = { "X-API-Key": $("key").value };
  const answers = await Promise.all(REPORTS.map(async ([name]) => {
    const response = await fetch(`/v1/reports/${name}?${search}`, { headers });
    return [name, response.ok ? await response.json() : { error: `${response.status}: ${await response.text()}` }];
  }));
  main.replaceChildren();
  window.leadflow.errors = [];
  for (const [name, title] of REPORTS) {
    const report = Object.fromEntries(answers)[name];
    if (report.error) { showError(`${title}: ${report.error}`); continue; }
    window.leadflow.reports[name] = report;
    main.appendChild(renderReport(name, title, report));
  }
  if (!window.leadflow.errors.length) {
    const first = answers[0][1];
    $("status").textContent = `${first.from} to ${first.to} (${first.timezone})`;
  }
  window.leadflow.ready = true;
}

function start() {
  const now = new Date();
  const fromHash = new URLSearchParams(location.hash.slice(1));
  $("month").value = fromHash.get("month") || `${now.getFullYear()}-${String(now.getMonth() + 1).padStart(2, "0")}`;
  $("key").value = fromHash.get("key") || localStorage.getItem("leadflow.key") || "";
  for (const name of FILTERS) if (fromHash.get(name)) $(name).value = fromHash.get(name);
  $("controls").addEventListener("submit", load);
  if ($("key").value) load();
}

start();
