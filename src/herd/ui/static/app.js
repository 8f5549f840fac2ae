// herd ui: the pages (Family, Artifact, Run, Chat, Compare), plain DOM and fetch; routes live in the hash.
"use strict";

// ---- helpers -------------------------------------------------------------------------------------

function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined && k !== false)
    e.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

// Server-sent events from GET or POST (EventSource cannot POST): calls onEvent(obj) per "data:" line.
async function sse(path, body, onEvent) {
  const r = await fetch(path, body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  if (!r.ok) {
    const data = await r.json().catch(() => ({}));
    throw new Error(data.error || `HTTP ${r.status}`);
  }
  const reader = r.body.getReader(), dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += dec.decode(value, {stream: true});
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
      for (const line of chunk.split("\n")) if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
    }
  }
}

const short = s => (s ? String(s).slice(0, 12) : "–");
const link = (page, params, text) => h("a", {href: `#/${page}?${new URLSearchParams(params)}`}, text);
const badge = (state, text) => h("span", {class: `badge ${state}`}, text || state);
const errorBox = msg => h("div", {class: "error", role: "alert"}, msg);

let TREE = null;  // the last /api/tree answer (artifact lists for the selects)
async function loadTree() { TREE = await api("/api/tree"); return TREE; }
function artifactNodes(okOnly = true) {
  return (TREE ? TREE.nodes : []).filter(n => n.kind === "artifact" && (!okOnly || n.status === "ok"));
}

// ---- router ----------------------------------------------------------------------------------------

const PAGES = {family: pageFamily, artifact: pageArtifact, run: pageRun, chat: pageChat, compare: pageCompare};

async function route() {
  const [name, query] = (location.hash.replace(/^#\/?/, "") || "family").split("?");
  const page = PAGES[name] ? name : "family";
  document.querySelectorAll("nav a").forEach(a => a.classList.toggle("active", a.dataset.page === page));
  const root = document.getElementById("page");
  root.replaceChildren(h("p", {class: "muted"}, "loading…"));
  document.body.dataset.page = page;
  try {
    const view = await PAGES[page](new URLSearchParams(query || ""));
    root.replaceChildren(view);
  } catch (e) {
    root.replaceChildren(errorBox(e.message));
  }
}
window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);

// ---- Family ----------------------------------------------------------------------------------------

function boxLines(n) {
  const wrap = (t, w = 30) => { const out = []; let cur = "";
    for (const word of String(t).split(/\s+/)) {
      if ((cur + " " + word).trim().length > w && cur) { out.push(cur); cur = word; } else cur = (cur + " " + word).trim();
    }
    if (cur) out.push(cur); return out; };
  const lines = [];
  const mark = {partial: "PARTIAL", corrupt: "CORRUPT", missing: "MISSING"}[n.status];
  if (mark) lines.push(...wrap(`${mark}: ${n.detail}`).slice(0, 3));
  else if (n.kind === "external") lines.push("(not Llama)");
  if (n.headline) lines.push(...wrap(n.headline).slice(0, 2));
  if (n.detail && !mark && n.kind !== "external") lines.push(...wrap(n.detail).slice(0, 1));
  if (n.path && n.path !== n.label) lines.push(...wrap(n.path).slice(0, 1));
  return lines.slice(0, 5);
}

function drawTree(tree, onPick) {
  const BW = 200, BH = 96, GX = 218, GY = 140, M = 16;
  const xs = tree.nodes.map(n => n.x), layers = tree.nodes.map(n => n.layer);
  const minX = Math.min(...xs, 0), W = (Math.max(...xs, 0) - minX) * GX + BW + 2 * M;
  const H = (Math.max(...layers, 0) + 1) * GY + M;
  const svg = svgEl("svg", {width: W, height: H, class: "tree", id: "tree-svg"});
  const defs = svgEl("defs", {}, svg);
  const mk = svgEl("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
                              orient: "auto-start-reverse"}, defs);
  svgEl("path", {d: "M 0 0 L 10 5 L 0 10 z", fill: "#555"}, mk);
  const pos = {};
  tree.nodes.forEach(n => { pos[n.id] = [M + (n.x - minX) * GX, M + n.layer * GY]; });
  const byId = Object.fromEntries(tree.nodes.map(n => [n.id, n]));
  for (const e of tree.edges) {
    if (!pos[e.src] || !pos[e.dst]) continue;
    const [sx, sy] = pos[e.src], [dx, dy] = pos[e.dst];
    const dashed = e.kind === "external" || byId[e.src].kind === "missing" || ["partial", "corrupt"].includes(byId[e.dst].status);
    const faint = e.kind === "rederives";  // which paper a run re-derives: a dotted hint, not lineage
    svgEl("line", {x1: sx + BW / 2, y1: sy + BH, x2: dx + BW / 2, y2: dy - 2, stroke: faint ? "#9aaec4" : "#555",
                   "stroke-width": 1, "marker-end": "url(#arrow)",
                   "stroke-dasharray": faint ? "1 3" : dashed ? "4 3" : null}, svg);
    if (e.label) {
      svgEl("text", {x: (sx + dx + BW) / 2 + 4, y: (sy + BH + dy) / 2, "font-size": 9, fill: "#667085"}, svg)
        .textContent = e.label.length > 38 ? e.label.slice(0, 37) + "…" : e.label;
    }
  }
  for (const n of tree.nodes) {
    const [x, y] = pos[n.id];
    const g = svgEl("g", {class: `node ${n.kind} ${n.status}`, "data-id": n.id, "data-path": n.path || "",
                          "data-status": n.status, tabindex: 0}, svg);
    svgEl("rect", {x, y, width: BW, height: BH, rx: 8, fill: n.fill, stroke: n.border, "stroke-width": 1.3,
                   "stroke-dasharray": n.dash === "--" ? "5 3" : null}, g);
    svgEl("title", {}, g).textContent = [n.label, n.headline, n.detail, n.path].filter(Boolean).join("\n");
    svgEl("text", {x: x + 8, y: y + 16, class: "title"}, g).textContent = n.label.length > 30 ? n.label.slice(0, 29) + "…" : n.label;
    boxLines(n).forEach((t, i) => { svgEl("text", {x: x + 8, y: y + 31 + i * 13}, g).textContent = t; });
    g.addEventListener("click", () => onPick(n));
    g.addEventListener("keydown", ev => { if (ev.key === "Enter") onPick(n); });
  }
  return svg;
}

async function pageFamily(q) {
  const withCatalogue = q.get("catalogue") !== "0";
  const tree = TREE = await api(`/api/tree?catalogue=${withCatalogue}`);
  const toggle = h("input", {type: "checkbox", id: "show-catalogue", checked: withCatalogue ? true : null,
    onchange: ev => { location.hash = ev.target.checked ? "#/family" : "#/family?catalogue=0"; }});
  const detail = h("div", {class: "card", id: "node-detail"}, h("span", {class: "muted"},
    "Click a node: an artifact opens its page; a catalogue member shows its published numbers."));
  const pick = n => {
    if (n.kind === "artifact" && n.path) { location.hash = `#/artifact?path=${encodeURIComponent(n.path)}`; return; }
    detail.replaceChildren(h("h2", {}, n.label), badge(n.status),
      n.headline ? h("p", {}, n.headline) : null, n.detail ? h("p", {class: "muted"}, n.detail) : null);
  };
  const arts = artifactNodes(false);
  const rows = arts.map(n => h("tr", {},
    h("td", {}, link("artifact", {path: n.path}, n.label)), h("td", {}, badge(n.status)),
    h("td", {class: "mono"}, n.path), h("td", {}, n.status === "ok" ? (n.headline || "") : (n.detail || ""))));
  const members = tree.nodes.filter(n => n.kind === "member");
  return h("div", {},
    h("h1", {}, "Family"),
    h("p", {class: "muted"}, `The catalogue (published members) and the workspace ${tree.workspace}: `,
      `${arts.length} artifact folder(s), ${arts.filter(n => n.status !== "ok").length} corrupt or partial.`),
    h("label", {}, toggle, " show the catalogue (published members) with the workspace"),
    h("div", {class: "tree-wrap"}, drawTree(tree, pick)),
    detail,
    h("h2", {}, "Workspace artifacts"),
    arts.length ? h("table", {id: "artifact-table"}, h("tr", {}, h("th", {}, "artifact"), h("th", {}, "state"),
      h("th", {}, "folder"), h("th", {}, "headline / problem")), rows)
      : h("p", {class: "muted"}, "Nothing derived here yet: start one on the Run page."),
    members.length ? h("h2", {}, "Catalogue") : null,
    members.length ? h("table", {id: "catalogue-table"}, h("tr", {}, h("th", {}, "member"), h("th", {}, "published headline"),
      h("th", {}, "recipe")), members.map(n => h("tr", {}, h("td", {}, n.label), h("td", {}, n.headline || "–"),
      h("td", {class: "muted"}, n.detail || "")))) : null);
}

// ---- Artifact ----------------------------------------------------------------------------------------

function kv(rows) {
  return h("table", {class: "kv"}, rows.filter(r => r[1] !== undefined && r[1] !== null && r[1] !== "")
    .map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {class: "mono"}, v))));
}

function lineageCard(lin) {
  if (!lin) return h("div", {class: "card"}, h("span", {class: "muted"}, "no readable lineage.json"));
  const p = lin.parent || {}, r = lin.recipe || {}, herd = lin.herd || {};
  const parent = p.kind === "artifact" && p.source ? link("artifact", {path: p.source}, p.name) : (p.name || "–");
  return h("div", {class: "card", id: "lineage"}, h("h2", {}, "Lineage"), kv([
    ["name", lin.name], ["lineage id", short(lin.id)], ["parent", h("span", {}, parent, ` (${p.kind || "?"})`)],
    ["parent weights", p.sha256], ["recipe", r.name ? `${r.name} · profile ${r.profile}` : null],
    ["recipe file", r.file], ["recipe sha256", r.sha256], ["stage", lin.stage ? `${lin.stage.name} (${lin.stage.kind})` : null],
    ["template", lin.template ? lin.template.name : null], ["weights sha256", lin.weights_sha256],
    ["herd", `${herd.version || "?"}${herd.git_commit ? " @ " + herd.git_commit.slice(0, 10) : ""}${herd.git_dirty ? " (dirty)" : ""}`],
    ["created", lin.created]]),
    (lin.data || []).length ? h("div", {}, h("h2", {}, "Data"), h("table", {},
      h("tr", {}, h("th", {}, "name"), h("th", {}, "records"), h("th", {}, "sha256")),
      lin.data.map(d => h("tr", {}, h("td", {}, d.name), h("td", {class: "num"}, d.records), h("td", {class: "mono"}, d.sha256)))))
      : null);
}

function deltaCell(m) {
  if (typeof m.parent !== "number" || typeof m.derived !== "number") return h("td", {}, "–");
  const d = typeof m.delta === "number" ? m.delta : m.derived - m.parent;
  // colour only what the paired CI settles (verdict); rows without one fall back to the sign
  const good = m.verdict ? (m.verdict === "better" ? true : m.verdict === "worse" ? false : null)
    : m.better === "lower" ? d < 0 : m.better === "higher" ? d > 0 : null;
  const text = (d > 0 ? "+" : "") + fmtNum(d) + (m.verdict ? ` (${m.verdict})` : "");
  return h("td", {class: `num ${good === null ? "" : good ? "better" : "worse"}`}, text);
}

function ciText(x) {
  const ci = x && (x.ci || x.ci95);
  if (!ci) return null;
  if (Array.isArray(ci)) return `95% CI [${fmtNum(ci[0])}, ${fmtNum(ci[1])}]`;
  const lo = ci.low ?? ci.lo ?? ci.lower, hi = ci.high ?? ci.hi ?? ci.upper;
  return lo !== undefined ? `${Math.round((ci.confidence || 0.95) * 100)}% CI [${fmtNum(lo)}, ${fmtNum(hi)}]` : null;
}

// [table title, category or null]: rows an eval marks with a category share one table per group;
// scorecards written before evals marked them ("guard auprc: Violence", name "auprc/Violence") are read so.
function metricGroup(m) {
  if (m.category) return [m.group || `${m.task} · per category`, m.category];
  const i = String(m.task || "").indexOf(": ");
  if (String(m.name || "").includes("/") && i > 0) return [`${m.task.slice(0, i)} per category`, m.task.slice(i + 2)];
  return [m.task, null];
}

// Curves an eval recorded in scorecard.json's extra: a chart {title, xlabel, ylabel, series: [{name, points}]},
// a list of them (the guard eval's precision-recall panels), or a bare {x: [...], y: [...]}.
function evalCurves(extra) {
  const charts = [];
  const isChart = v => v && typeof v === "object" && Array.isArray(v.series);
  for (const [k, v] of Object.entries(extra)) {
    for (const c of (Array.isArray(v) ? v : [v]).filter(isChart)) {
      charts.push(lineChart(c.series.map(s => ({name: s.name, points: s.points || []})),
        {title: c.title || k, xlabel: c.xlabel || "x", ylabel: c.ylabel, height: 260}));
    }
    if (v && Array.isArray(v.x) && Array.isArray(v.y)) charts.push(lineChart([{name: k, points: v.x.map((x, i) => [x, v.y[i]])}],
      {title: k, xlabel: v.xlabel || "x"}));
  }
  return charts;
}

function scorecardCard(card) {
  if (!card) return h("div", {class: "card", id: "scorecard"}, h("h2", {}, "Scorecard"),
    h("span", {class: "muted"}, "no scorecard.json (a stage folder, or the run did not finish)"));
  const hd = card.headline || {};
  const first = (card.metrics || [])[0] || {};
  const head = h("div", {class: "headline"}, h("b", {}, hd.name || "headline"), ": parent ", fmtNum(hd.parent),
    " → derived ", fmtNum(hd.derived), " ", h("span", {class: "delta"}, deltaCell({...hd}).textContent),
    hd.better ? h("span", {class: "muted"}, ` (${hd.better} is better)`) : null,
    ciText(hd) || ciText(first) ? h("div", {class: "muted"}, ciText(hd) || ciText(first)) : null);
  const groups = {};
  for (const m of card.metrics || []) {
    const [group, category] = metricGroup(m);
    (groups[group] ||= []).push({...m, category});
  }
  const tables = Object.entries(groups).map(([group, ms]) => h("div", {class: "metric-group"}, h("h3", {}, group),
    h("table", {"data-group": group},
      h("tr", {}, h("th", {}, ms[0].category ? "category" : "metric"), h("th", {}, "dataset"), h("th", {}, "parent"),
        h("th", {}, "derived"), h("th", {}, "Δ"), h("th", {}, "CI")),
      ms.map(m => h("tr", {}, h("td", {}, m.category || m.name), h("td", {class: "muted"}, m.dataset || ""),
        h("td", {class: "num"}, fmtNum(m.parent)), h("td", {class: "num"}, fmtNum(m.derived)), deltaCell(m),
        h("td", {class: "muted"}, ciText(m) || ""))))));
  const curves = evalCurves(card.extra || {});
  return h("div", {class: "card", id: "scorecard"}, h("h2", {}, `Scorecard: ${card.title || card.recipe || ""}`),
    h("p", {class: "muted"}, `profile ${card.profile} · template ${card.template} · paper base ${card.paper_base}`),
    head, tables, curves.length ? h("div", {class: "row", id: "eval-curves"}, curves) : null,
    (card.published || []).length ? h("div", {}, h("h3", {}, "Published numbers"), h("ul", {class: "plain"},
      card.published.map(p => h("li", {}, p.claim, " ", h("span", {class: "muted"}, `(${p.source})`), " ",
        p.comparable ? badge("ok", "comparable") : badge("cancelled", "not comparable"),
        p.why_not ? h("span", {class: "muted"}, ` ${p.why_not}`) : null)))) : null,
    (card.deviations || []).length ? h("details", {}, h("summary", {}, `Deviations from the paper (${card.deviations.length})`),
      h("ul", {class: "plain"}, card.deviations.map(d => h("li", {}, d)))) : null,
    (card.sections || []).length ? h("details", {}, h("summary", {}, "Per-eval detail (tables)"),
      card.sections.map(s => h("pre", {}, s))) : null);
}

function curvesCard(rows, id = "curves") {
  const pts = key => rows.filter(r => typeof r[key] === "number").map(r => [r.step, r[key]]);
  return h("div", {class: "card", id}, h("h2", {}, "Training curves"),
    rows.length ? h("div", {class: "row"},
      lineChart([{name: "loss", points: pts("loss")}], {title: "loss", id: `${id}-loss`}),
      lineChart([{name: "lr", points: pts("lr")}], {title: "learning rate", id: `${id}-lr`}),
      pts("tokens_per_s").length ? lineChart([{name: "tokens/s", points: pts("tokens_per_s")}], {title: "tokens/s"}) : null)
      : h("span", {class: "muted"}, "no metrics.jsonl here"));
}

function samplesCard(card) {
  const s = (card && card.samples) || [];
  if (!s.length) return null;
  return h("div", {class: "card", id: "samples"}, h("h2", {}, "Sample answers: parent vs derived"), h("table", {},
    h("tr", {}, h("th", {}, "prompt"), h("th", {}, "parent"), h("th", {}, "derived")),
    s.map(x => h("tr", {}, h("td", {}, [x.instruction || x.prompt, x.input].filter(Boolean).join("\n\n")),
      h("td", {class: "mono"}, x.parent), h("td", {class: "mono"}, x.derived)))));
}

function exportCard(a) {
  const out = h("div", {});
  const start = async to => {
    out.replaceChildren(h("span", {class: "muted"}, "queued…"));
    try {
      const job = await api("/api/export", {path: a.path, to});
      out.replaceChildren(jobPanel(job));
    } catch (e) { out.replaceChildren(errorBox(e.message)); }
  };
  return h("div", {class: "card", id: "export"}, h("h2", {}, "Export"),
    h("div", {class: "row"}, h("button", {onclick: () => start("gguf")}, "Export GGUF (f16)"),
      h("button", {class: "secondary", onclick: () => start("hf")}, "Export HF folder")),
    a.exports.length ? h("ul", {class: "plain"}, a.exports.map(e => h("li", {class: "mono"}, e))) : null, out);
}

async function pageArtifact(q) {
  const a = await api(`/api/artifact?path=${encodeURIComponent(q.get("path") || "")}`);
  const lin = a.lineage || {};
  const parentPath = lin.parent && lin.parent.kind === "artifact" ? lin.parent.source : null;
  return h("div", {},
    h("h1", {}, a.name, " ", badge(a.status)),
    a.problem ? errorBox(a.problem) : null,
    h("p", {class: "row"}, h("span", {class: "mono muted"}, a.path),
      a.status === "ok" ? link("chat", {a: a.path}, "chat with it") : null,
      a.status === "ok" && parentPath ? link("chat", {a: a.path, b: parentPath}, "side by side with its parent") : null,
      link("compare", {a: a.path}, "compare…")),
    scorecardCard(a.scorecard), curvesCard(a.metrics), samplesCard(a.scorecard), lineageCard(a.lineage),
    a.status === "ok" ? exportCard(a) : null);
}

// ---- Run -------------------------------------------------------------------------------------------------

function jobPanel(job) {
  const state = h("span", {class: "state"}, badge(job.state)), stage = h("b", {}, "–"), step = h("b", {}, "–"), loss = h("b", {}, "–");
  const tps = h("b", {}, "–"), eta = h("b", {}, "–"), bar = h("div", {}), log = h("div", {class: "log"});
  const actions = h("span", {class: "row"});
  const panel = h("div", {class: "card job", id: `job-${job.id}`, "data-state": job.state},
    h("div", {class: "row"}, h("b", {}, `#${job.id} ${job.label}`), state, actions),
    h("div", {class: "mono muted"}, job.argv.join(" ")),
    h("div", {}, h("span", {class: "stat"}, "stage ", stage), h("span", {class: "stat"}, "step ", step),
      h("span", {class: "stat"}, "loss ", loss), h("span", {class: "stat"}, "tokens/s ", tps),
      h("span", {class: "stat"}, "ETA ", eta)),
    h("div", {class: "progressbar"}, bar), log);
  const setActions = st => {
    actions.replaceChildren();
    if (["queued", "running"].includes(st)) actions.appendChild(h("button", {class: "secondary cancel",
      onclick: async () => { await api(`/api/jobs/${job.id}/cancel`, {}); }}, "Cancel"));
    if (job.kind === "derive" && ["failed", "cancelled"].includes(st)) actions.appendChild(h("button", {class: "resume",
      onclick: async () => { const j = await api(`/api/jobs/${job.id}/resume`, {});
        panel.parentNode.insertBefore(jobPanel(j), panel); }}, "Resume"));
    if (st === "done" && job.out) actions.appendChild(link("artifact", {path: job.out}, "open the artifact"));
  };
  setActions(job.state);
  let seen = 0;
  sse(`/api/jobs/${job.id}/events`, undefined, ev => {
    seen++;
    panel.dataset.events = seen;
    if (ev.type === "log") {
      log.appendChild(document.createTextNode(ev.line + "\n"));
      while (log.childNodes.length > 400) log.removeChild(log.firstChild);
      log.scrollTop = log.scrollHeight;
    } else if (ev.type === "progress") {
      panel.dataset.progress = (+(panel.dataset.progress || 0) + 1).toString();
      if (ev.stage) stage.textContent = ev.stage;
      if (ev.step !== undefined) { step.textContent = `${ev.step}/${ev.total} ${ev.unit || ""}`;
        bar.style.width = `${100 * ev.step / ev.total}%`; }
      if (ev.loss !== undefined) loss.textContent = fmtNum(ev.loss);
      if (ev.tokens_per_s !== undefined) tps.textContent = fmtNum(ev.tokens_per_s);
      if (ev.eta !== undefined) eta.textContent = ev.eta;
    } else if (ev.type === "state") {
      state.replaceChildren(badge(ev.state));
      panel.dataset.state = ev.state;
      setActions(ev.state);
      window.dispatchEvent(new Event("herd-jobs-changed"));  // the interrupted-runs list may change
    }
  }).catch(e => log.appendChild(document.createTextNode(`[ui] event stream ended: ${e.message}\n`)));
  return panel;
}

// Derives in the workspace that did not finish, whoever started them (the page or `herd derive`), each
// with a Resume button when its derive.json lets the page rebuild `herd derive ... --resume`, else why not.
function runsCard(jobList) {
  const body = h("div", {});
  const card = h("div", {class: "card", id: "interrupted"}, h("h2", {}, "Interrupted runs in the workspace"), body);
  const row = r => {
    const actions = h("div", {class: "row"});
    if (r.resumable) actions.appendChild(h("button", {class: "resume-run", onclick: async ev => {
      ev.target.disabled = true;
      try {
        const job = await api("/api/runs/resume", {out: r.out});
        jobList.insertBefore(jobPanel(job), jobList.firstChild);
        actions.replaceChildren(h("span", {class: "muted"}, `resuming as job #${job.id}`));
      } catch (e) { ev.target.disabled = false; actions.appendChild(errorBox(e.message)); }
    }}, "Resume"));
    else actions.appendChild(h("div", {class: "muted why"}, r.why));
    const work = r.unfinished.map(u => `${u.folder}${u.checkpoint_step ? ` (checkpoint at step ${u.checkpoint_step})` : ""}`);
    return h("div", {class: "run", "data-out": r.out, "data-state": r.state, "data-resumable": r.resumable ? "1" : "0"},
      h("div", {class: "row"}, h("b", {class: "mono"}, r.out), badge(r.state === "interrupted" ? "partial" : r.state, r.state),
        r.started ? h("span", {class: "muted"}, `started ${r.started}`) : null),
      r.command ? h("div", {class: "mono muted"}, r.command) : null,
      h("div", {class: "muted"}, `finished stages: ${r.stages_done.join(", ") || "none"}`,
        work.length ? ` · unfinished: ${work.join(", ")}` : ""),
      r.error ? h("div", {class: "mono muted"}, r.error) : null, actions);
  };
  const refresh = async () => {
    if (!card.isConnected && card.dataset.loaded) { window.removeEventListener("herd-jobs-changed", soon); return; }
    try {
      const {runs} = await api("/api/runs");
      body.replaceChildren(...(runs.length ? runs.map(row)
        : [h("span", {class: "muted"}, "none: every derive in the workspace finished")]));
    } catch (e) { body.replaceChildren(errorBox(e.message)); }
    card.dataset.loaded = "1";
  };
  let pending = null;  // job panels replay their past states on load: one refresh for a burst of them
  const soon = () => { clearTimeout(pending); pending = setTimeout(refresh, 300); };
  window.addEventListener("herd-jobs-changed", soon);
  refresh();
  return card;
}

async function pageRun() {
  const meta = await api("/api/files");
  const {jobs} = await api("/api/jobs");
  const dl = (id, items) => h("datalist", {id}, items.map(x => h("option", {value: x})));
  const yamls = meta.files.filter(f => /\.ya?ml$/.test(f)), datas = meta.files.filter(f => /\.jsonl?$/.test(f));
  const f = {
    recipe: h("input", {name: "recipe", list: "dl-recipes", value: "alpaca", size: 40}),
    base: h("input", {name: "base", list: "dl-bases", placeholder: "the recipe's", size: 40}),
    profile: h("input", {name: "profile", value: "tiny", size: 12}),
    data: h("textarea", {name: "data", rows: 2, cols: 60, placeholder: "optional: data files in the workspace, one per line"}),
    max_steps: h("input", {name: "max_steps", type: "number", min: 1, placeholder: "all", size: 8}),
    out: h("input", {name: "out", placeholder: "default: RECIPE-BASE-PROFILE", size: 40}),
  };
  const msg = h("div", {id: "run-message"});
  const list = h("div", {id: "jobs"}, jobs.slice().reverse().map(jobPanel));
  const start = async ev => {
    ev.preventDefault();
    msg.replaceChildren();
    const body = {recipe: f.recipe.value, base: f.base.value, profile: f.profile.value, out: f.out.value,
                  data: f.data.value.split("\n").map(s => s.trim()).filter(Boolean), max_steps: f.max_steps.value || null};
    try {
      const job = await api("/api/derive", body);
      list.insertBefore(jobPanel(job), list.firstChild);
    } catch (e) { msg.replaceChildren(errorBox(e.message)); }
  };
  return h("div", {},
    h("h1", {}, "Run a recipe"),
    h("form", {class: "card", id: "run-form", onsubmit: start},
      dl("dl-recipes", [...meta.recipes, ...yamls]), dl("dl-bases", meta.bases), dl("dl-data", datas),
      h("label", {}, h("span", {}, "recipe"), f.recipe), h("label", {}, h("span", {}, "base"), f.base),
      h("label", {}, h("span", {}, "profile"), f.profile), h("label", {}, h("span", {}, "data files"), f.data),
      datas.length ? h("p", {class: "muted mono"}, "workspace data files: " + datas.join(", ")) : null,
      h("label", {}, h("span", {}, "max steps"), f.max_steps), h("label", {}, h("span", {}, "out folder"), f.out),
      h("div", {class: "row"}, h("button", {type: "submit", id: "start"}, "Start derive"),
        h("span", {class: "muted"}, "one job runs at a time; later ones queue. Paths are relative to the workspace.")),
      msg),
    runsCard(list),
    h("h2", {}, "Jobs"), list);
}

// ---- Chat --------------------------------------------------------------------------------------------------

function artifactSelect(name, value, okOnly = true, blank = null) {
  const sel = h("select", {name}, blank ? h("option", {value: ""}, blank) : null,
    artifactNodes(okOnly).map(n => h("option", {value: n.path, selected: n.path === value ? true : null},
      `${n.label} · ${n.path}`)));
  if (value && !artifactNodes(okOnly).some(n => n.path === value)) {
    sel.appendChild(h("option", {value, selected: true}, value));
  }
  return sel;
}

function chatPane(id, initial) {
  const sel = artifactSelect(`${id}-artifact`, initial, true, id === "b" ? "(none: one pane)" : null);
  const msgs = h("div", {class: "msgs"}), history = [];
  const pane = h("div", {class: "card chatpane", id: `pane-${id}`}, h("div", {class: "row"}, sel), msgs);
  pane.reset = () => { history.length = 0; msgs.replaceChildren(); };
  sel.addEventListener("change", pane.reset);
  pane.ask = async (prompt, guard) => {
    if (!sel.value) return;
    history.push({role: "user", content: prompt});
    const userMsg = h("div", {class: "msg user"}, prompt), out = h("div", {class: "msg assistant", "data-done": "0"});
    msgs.append(userMsg, out);
    let text = "";
    try {
      await sse("/api/chat", {path: sel.value, messages: history, guard: guard || null, max_tokens: 96}, ev => {
        if (ev.delta) { text += ev.delta; out.textContent = text; out.dataset.chunks = (+(out.dataset.chunks || 0) + 1); }
        if (ev.flagged) {
          const target = ev.where === "input" ? userMsg : out;
          target.classList.add("flagged");
          target.appendChild(h("div", {}, badge("flagged", `flagged ${ev.where}`),
            ev.categories && ev.categories.length ? ` ${ev.categories.join(", ")}` : ""));
        }
        if (ev.error) out.appendChild(errorBox(ev.error));
        if (ev.done) out.dataset.done = "1";
      });
    } catch (e) { out.appendChild(errorBox(e.message)); }
    history.push({role: "assistant", content: text});
  };
  return pane;
}

async function pageChat(q) {
  await loadTree();
  const a = chatPane("a", q.get("a") || (artifactNodes()[0] || {}).path);
  const b = chatPane("b", q.get("b") || "");
  const guard = artifactSelect("guard", q.get("guard") || "", true, "(no guard)");
  const input = h("textarea", {id: "prompt", rows: 2, cols: 80, placeholder: "Ask both models the same thing…"});
  const send = async ev => {
    ev.preventDefault();
    const p = input.value.trim();
    if (!p) return;
    input.value = "";
    await Promise.all([a.ask(p, guard.value), b.ask(p, guard.value)]);
  };
  return h("div", {},
    h("h1", {}, "Chat"),
    h("p", {class: "muted"}, "Each artifact answers in its own template, streamed. Choose a second artifact (its parent) ",
      "to see both answer the same prompt; with a guard chosen, flagged input or output is marked."),
    h("div", {class: "row"}, h("span", {class: "muted"}, "guard:"), guard),
    h("div", {class: "grid2"}, a, b),
    h("form", {class: "row", id: "chat-form", onsubmit: send}, input, h("button", {type: "submit", id: "send"}, "Send"),
      h("button", {type: "button", class: "secondary", onclick: () => { a.reset(); b.reset(); }}, "Clear")));
}

// ---- Compare --------------------------------------------------------------------------------------------

async function pageCompare(q) {
  await loadTree();
  const cols = h("div", {class: "grid2", id: "compare"});
  const sa = artifactSelect("a", q.get("a") || "", false, "(choose)"), sb = artifactSelect("b", q.get("b") || "", false, "(choose)");
  const show = async () => {
    location.replace(`#/compare?${new URLSearchParams({a: sa.value, b: sb.value})}`);
  };
  sa.addEventListener("change", show); sb.addEventListener("change", show);
  const col = async path => {
    if (!path) return h("div", {class: "muted"}, "choose an artifact");
    try {
      const x = await api(`/api/artifact?path=${encodeURIComponent(path)}`);
      return h("div", {}, h("h2", {}, link("artifact", {path: x.path}, x.name), " ", badge(x.status)),
        scorecardCard(x.scorecard), curvesCard(x.metrics, `curves-${path.replace(/\W/g, "_")}`));
    } catch (e) { return errorBox(e.message); }
  };
  cols.append(await col(q.get("a")), await col(q.get("b")));
  return h("div", {}, h("h1", {}, "Compare"), h("div", {class: "row"}, sa, h("span", {}, "vs"), sb), cols);
}

api("/api/files").then(m => { document.getElementById("workspace").textContent = m.workspace; }).catch(() => {});
