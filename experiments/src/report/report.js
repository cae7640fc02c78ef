"use strict";
// arbor report: draws the page from the JSON in #arbor-data. No network, no libraries.
const DATA = JSON.parse(document.getElementById("arbor-data").textContent);
const SVG_NS = "http://www.w3.org/2000/svg";
const app = document.getElementById("app");
app.textContent = "";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}
function sv(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}
function section(title) {
  const s = el("section", {});
  s.append(el("h2", {}, title));
  app.append(s);
  return s;
}
function fmt(v, digits) {
  if (v === null || v === undefined) return "-";
  if (typeof v !== "number") return String(v);
  if (!isFinite(v)) return "-";
  if (Number.isInteger(v)) return String(v);
  return v.toFixed(digits === undefined ? 3 : digits);
}
function table(header, rows, cls) {
  const t = el("table", cls ? { class: cls } : {});
  if (header) t.append(el("tr", {}, ...header.map((h) => el("th", {}, h))));
  for (const r of rows) t.append(el("tr", {}, ...r.map((c) => el("td", {}, fmt(c)))));
  return t;
}

// --- charts ---------------------------------------------------------------------------------
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
// Round tick values, and the decimals that tell them apart.
function ticks(lo, hi, n, integer) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  if (integer) step = Math.max(1, Math.round(step));
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  const out = [];
  for (let k = Math.ceil(lo / step); k * step <= hi + step * 1e-9; k++) out.push(k * step);
  return { values: out, digits };
}
// series: [{name, points: [{x, y, lo, hi}]}]; opts: {title, xlabel, yrange}
function lineChart(series, opts) {
  const W = 400, H = 230, L = 52, R = 10, T = 22, B = 34;
  const pts = series.flatMap((s) => s.points).filter((p) => isFinite(p.y));
  const svg = sv("svg", { width: W, height: H, class: "chart" });
  svg.append(sv("text", { x: L, y: 14, class: "title" }, opts.title));
  if (pts.length === 0) {
    svg.append(sv("text", { x: L, y: H / 2 }, "no data"));
    return svg;
  }
  let [x0, x1] = [Math.min(...pts.map((p) => p.x)), Math.max(...pts.map((p) => p.x))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  let [y0, y1] = opts.yrange || [
    Math.min(...pts.map((p) => (isFinite(p.lo) ? p.lo : p.y))),
    Math.max(...pts.map((p) => (isFinite(p.hi) ? p.hi : p.y))),
  ];
  if (y1 === y0) { y0 -= 1; y1 += 1; }
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const Y = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  svg.append(sv("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" }));
  svg.append(sv("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" }));
  const xt = ticks(x0, x1, 5, opts.integerX), yt = ticks(y0, y1, 4, false);
  for (const t of xt.values) {
    svg.append(sv("line", { x1: X(t), y1: H - B, x2: X(t), y2: H - B + 4, stroke: "#999" }));
    svg.append(sv("text", { x: X(t), y: H - B + 14, "text-anchor": "middle" }, t.toFixed(xt.digits)));
  }
  for (const t of yt.values) {
    svg.append(sv("line", { x1: L, y1: Y(t), x2: W - R, y2: Y(t), stroke: "#eee" }));
    svg.append(sv("text", { x: L - 4, y: Y(t) + 3, "text-anchor": "end" }, t.toFixed(yt.digits)));
  }
  svg.append(sv("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, opts.xlabel));
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length];
    const ps = s.points.filter((p) => isFinite(p.y));
    const band = ps.filter((p) => isFinite(p.lo) && isFinite(p.hi));
    if (band.length > 1) {
      const d = band.map((p) => `${X(p.x)},${Y(p.hi)}`).concat(
        band.slice().reverse().map((p) => `${X(p.x)},${Y(p.lo)}`));
      svg.append(sv("polygon", { points: d.join(" "), fill: c, opacity: 0.15 }));
    }
    svg.append(sv("polyline", {
      points: ps.map((p) => `${X(p.x)},${Y(p.y)}`).join(" "), fill: "none", stroke: c, "stroke-width": 1.5,
    }));
    for (const p of ps) {
      const dot = sv("circle", { cx: X(p.x), cy: Y(p.y), r: 2.5, fill: c });
      dot.append(sv("title", {}, `${s.name}: ${fmt(p.y)} at ${fmt(p.x, 0)}`));
      svg.append(dot);
    }
    if (series.length > 1) {
      svg.append(sv("text", { x: W - R - 4, y: T + 12 * (i + 1), "text-anchor": "end", fill: c }, s.name));
    }
  });
  return svg;
}

// --- the page -------------------------------------------------------------------------------
const facts = section("Run");
facts.append(table(null, [["run", DATA.run_id], ["arbor", DATA.arbor_version], ...DATA.config], "facts"));
if (DATA.summary) {
  const rows = Object.entries(DATA.summary)
    .filter(([, v]) => typeof v !== "object" || v === null)
    .map(([k, v]) => [k, v]);
  facts.append(el("h3", {}, "summary"), table(null, rows, "facts"));
}

if (DATA.kind === "sweep") {
  const s = section("Sweep table");
  const [header, rows] = DATA.table;
  s.append(el("div", { style: "overflow:auto" }, table(header, rows)));
  const p = section("Plots");
  for (const [name, svg] of DATA.plots) {
    const box = el("div", { class: "plot" });
    box.append(el("h3", {}, name));
    box.insertAdjacentHTML("beforeend", svg);
    p.append(box);
  }
}

if (DATA.kind === "run" && DATA.metrics.length > 0) {
  const s = section("Learning curves");
  const ctl = el("div", { class: "controls" });
  const xsel = el("select", { id: "x-axis" },
    el("option", { value: "step" }, "RL step"),
    el("option", { value: "tokens" }, "cumulative generated tokens"));
  ctl.append(el("label", {}, "x axis ", xsel));
  s.append(ctl);
  const box = el("div", { class: "charts", id: "curves" });
  s.append(box);
  const train = DATA.metrics.filter((m) => m.phase === "rl" || m.phase === "rollout");
  const evals = DATA.metrics.filter((m) => m.phase === "eval");
  const draw = () => {
    const tokens = xsel.value === "tokens";
    const x = (m) => (tokens ? m.cumulative_generated_tokens : m.step);
    const xlabel = tokens ? "cumulative generated tokens" : "RL step";
    const integerX = true;
    const pts = (rows, y, ci) => rows.map((m) => ({
      x: x(m), y: y(m), lo: ci && m.success_ci ? m.success_ci[0] : NaN, hi: ci && m.success_ci ? m.success_ci[1] : NaN,
    }));
    box.textContent = "";
    box.append(
      lineChart([{ name: "train reward", points: pts(train, (m) => m.reward_mean) }], { title: "train reward (mean over trajectories)", xlabel, integerX }),
      lineChart([{ name: "held-out success", points: pts(evals, (m) => m.success_rate, true) }], { title: "held-out success (95% Wilson interval)", xlabel, integerX, yrange: [0, 1] }),
      lineChart([{ name: "KL", points: pts(train, (m) => m.kl) }], { title: "KL to the reference", xlabel, integerX }),
      lineChart([{ name: "entropy", points: pts(train, (m) => m.entropy) }], { title: "entropy (nats per token)", xlabel, integerX }),
      lineChart([{ name: "clip fraction", points: pts(train, (m) => m.clip_frac) }], { title: "clip fraction", xlabel, integerX }),
      lineChart([{ name: "response length", points: pts(train, (m) => m.response_len_mean) }], { title: "mean response length (tokens)", xlabel, integerX }),
      lineChart([
        { name: "generated", points: pts(train, (m) => m.generated_tokens) },
        { name: "cached (prefix cache)", points: pts(train, (m) => m.cached_tokens) },
      ], { title: "budget use per step (tokens)", xlabel, integerX }),
      lineChart([{ name: "truncated", points: pts(train, (m) => m.truncated) }], { title: "trajectories cut by the budget per step", xlabel, integerX }),
    );
  };
  xsel.addEventListener("change", draw);
  draw();
}

// --- tree viewer ----------------------------------------------------------------------------
function advColor(a, scale) {
  if (a === null || a === undefined || !isFinite(a)) return "#ccc";
  const t = Math.max(-1, Math.min(1, scale > 0 ? a / scale : 0));
  const w = Math.round(255 * (1 - Math.abs(t)));
  return t >= 0 ? `rgb(${w},${w},255)` : `rgb(255,${w},${w})`;
}
function valueColor(v) {
  if (!isFinite(v)) return "#ccc";
  const t = Math.max(0, Math.min(1, v));
  return `rgb(${Math.round(255 * (1 - t))},${Math.round(200 * t + 55)},${Math.round(80)})`;
}
const LEAF_STROKE = { solved: "#1a9641", failed: "#d7191c", truncated: "#888" };

function showDetail(panel, group) {
  panel.textContent = "";
  const n = group[group.length - 1];
  const rows = [
    ["node", group.length > 1 ? `#${group[0].id}..#${n.id} (${group.length} nodes)` : `#${n.id}`],
    ["kind", group.map((g) => g.kind).join(", ")],
    ["tree", n.tree],
    ["tokens", group.reduce((s, g) => s + g.tokens, 0)],
    ["value", n.value],
    ["advantage", n.advantage],
    ["leaves below", n.leaves_below],
    ["logprob mean", n.logprob_mean],
    ["logprob min", n.logprob_min],
  ];
  if (n.leaf) rows.push(["leaf", n.leaf], ["reward", n.reward]);
  panel.append(table(null, rows, "facts"));
  panel.append(el("pre", { id: "detail-text" }, group.map((g) => g.text).join("")));
}

function drawTree(canvas, panel, tree, colorBy, collapse) {
  canvas.textContent = "";
  const byId = new Map(tree.nodes.map((n) => [n.id, n]));
  const kids = new Map(tree.nodes.map((n) => [n.id, []]));
  const tops = [];
  for (const n of tree.nodes) {
    if (n.parent === null || n.parent === undefined || !byId.has(n.parent)) tops.push(n);
    else kids.get(n.parent).push(n);
  }
  // Boxes: one node, or a linear run of single-child nodes when collapsed.
  const boxes = [];
  const build = (n, depth) => {
    const group = [n];
    let cur = n;
    while (collapse && kids.get(cur.id).length === 1) {
      cur = kids.get(cur.id)[0];
      group.push(cur);
    }
    const box = { group, depth, children: [] };
    boxes.push(box);
    box.children = kids.get(cur.id).map((c) => build(c, depth + 1));
    return box;
  };
  const roots = tops.map((t) => build(t, 1));
  let next = 0;
  const place = (b) => {
    if (b.children.length === 0) { b.x = next++; return; }
    b.children.forEach(place);
    b.x = (b.children[0].x + b.children[b.children.length - 1].x) / 2;
  };
  roots.forEach(place);
  const big = boxes.length > 1500;
  const DX = big ? 10 : 28, DY = big ? 26 : 46, PAD = 20;
  const depth = Math.max(1, ...boxes.map((b) => b.depth));
  const W = Math.max(600, PAD * 2 + next * DX), H = PAD * 2 + (depth + 1) * DY;
  const svg = sv("svg", { width: W, height: H, id: "tree-svg" });
  const px = (b) => PAD + b.x * DX + DX / 2, py = (d) => PAD + d * DY;
  const rootX = roots.length ? (px(roots[0]) + px(roots[roots.length - 1])) / 2 : W / 2;
  const advs = tree.nodes.map((n) => Math.abs(n.advantage || 0)).filter(isFinite);
  const scale = Math.max(1e-9, ...advs);
  for (const b of boxes) {
    for (const c of b.children) {
      svg.append(sv("line", { x1: px(b), y1: py(b.depth), x2: px(c), y2: py(c.depth), stroke: "#bbb" }));
    }
  }
  for (const r of roots) svg.append(sv("line", { x1: rootX, y1: py(0), x2: px(r), y2: py(1), stroke: "#bbb" }));
  const prompt = sv("g", { class: "node", "data-node": "prompt" },
    sv("rect", { x: rootX - 30, y: py(0) - 9, width: 60, height: 18, rx: 3, fill: "#eee", stroke: "#888" }),
    sv("text", { x: rootX, y: py(0) + 4, "text-anchor": "middle" }, "prompt"));
  prompt.addEventListener("click", () => {
    panel.textContent = "";
    panel.append(el("b", {}, `task ${tree.task_id}, step ${tree.step}: prompt`), el("pre", { id: "detail-text" }, tree.prompt));
  });
  svg.append(prompt);
  let selected = null;
  for (const b of boxes) {
    const last = b.group[b.group.length - 1];
    const fill = colorBy === "value" ? valueColor(last.value) : advColor(last.advantage, scale);
    const stroke = last.leaf ? LEAF_STROKE[last.leaf] : "#555";
    const dash = last.leaf === "truncated" ? "3,2" : "";
    const g = sv("g", { class: "node", "data-node": String(b.group[0].id) });
    if (big) {
      g.append(sv("circle", { cx: px(b), cy: py(b.depth), r: 4, fill, stroke, "stroke-width": last.leaf ? 2 : 1, "stroke-dasharray": dash }));
    } else {
      const obs = b.group.every((n) => n.kind === "observation");
      g.append(sv("rect", {
        x: px(b) - 11, y: py(b.depth) - 9, width: 22, height: 18, rx: obs ? 9 : 2,
        fill, stroke, "stroke-width": last.leaf ? 2.5 : 1, "stroke-dasharray": dash,
      }));
      g.append(sv("text", { x: px(b), y: py(b.depth) + 4, "text-anchor": "middle" },
        b.group.length > 1 ? `×${b.group.length}` : (last.kind === "action" ? "a" : "o")));
    }
    g.append(sv("title", {}, b.group.map((n) => n.text).join("").slice(0, 200)));
    g.addEventListener("click", () => {
      if (selected) selected.classList.remove("selected");
      selected = g;
      g.classList.add("selected");
      showDetail(panel, b.group);
    });
    svg.append(g);
  }
  canvas.append(svg);
  return boxes.length;
}

if (DATA.kind === "run") {
  const s = section("Rollout trees");
  if (DATA.trees.length === 0) {
    s.append(el("p", {}, "No trees were exported (rl.export_rollouts = \"none\")."));
  } else {
    const steps = [...new Set(DATA.trees.map((t) => t.step))];
    const ssel = el("select", { id: "tree-step" }, ...steps.map((x) => el("option", { value: x }, `step ${x}`)));
    ssel.value = String(steps[steps.length - 1]);
    const tsel = el("select", { id: "tree-task" });
    const csel = el("select", { id: "tree-color" },
      el("option", { value: "advantage" }, "advantage"), el("option", { value: "value" }, "value"));
    const coll = el("input", { type: "checkbox", id: "tree-collapse" });
    const info = el("span", { id: "tree-info" });
    s.append(el("div", { class: "controls" },
      el("label", {}, "step ", ssel), el("label", {}, "task ", tsel),
      el("label", {}, "colour by ", csel), el("label", {}, coll, " collapse linear runs"), info));
    s.append(el("div", { class: "legend" },
      el("span", {}, el("i", { class: "swatch", style: "background:#6f6fff" }), "positive advantage"),
      el("span", {}, el("i", { class: "swatch", style: "background:#ff6f6f" }), "negative advantage"),
      el("span", {}, el("i", { class: "swatch", style: "border:2px solid #1a9641" }), "solved leaf"),
      el("span", {}, el("i", { class: "swatch", style: "border:2px solid #d7191c" }), "failed leaf"),
      el("span", {}, el("i", { class: "swatch", style: "border:2px dashed #888" }), "truncated leaf"),
      el("span", {}, "square: action, round: observation")));
    if (DATA.steps_left_out.length) {
      s.append(el("p", {}, `Steps left out to keep the page small: ${DATA.steps_left_out.join(", ")}.`));
    }
    const canvas = el("div", { class: "canvas" });
    const panel = el("div", { class: "detail", id: "detail" }, "Click a node.");
    s.append(el("div", { class: "viewer" }, canvas, panel));
    const fillTasks = () => {
      tsel.textContent = "";
      for (const t of DATA.trees.filter((t) => String(t.step) === ssel.value)) {
        tsel.append(el("option", { value: t.task_id }, `task ${t.task_id}`));
      }
    };
    const redraw = () => {
      const tree = DATA.trees.find((t) => String(t.step) === ssel.value && String(t.task_id) === tsel.value);
      if (!tree) return;
      const leaves = tree.nodes.filter((n) => n.leaf);
      const solved = leaves.filter((n) => n.leaf === "solved").length;
      const drawn = drawTree(canvas, panel, tree, csel.value, coll.checked);
      info.textContent = `${tree.nodes.length} nodes (${drawn} drawn), ${leaves.length} leaves, ${solved} solved`;
      panel.textContent = "Click a node.";
    };
    ssel.addEventListener("change", () => { fillTasks(); redraw(); });
    for (const c of [tsel, csel, coll]) c.addEventListener("change", redraw);
    fillTasks();
    redraw();
    // `#selftest`: click the first leaf, as a browser check does.
    if (location.hash === "#selftest") {
      const tree = DATA.trees.find((t) => String(t.step) === ssel.value && String(t.task_id) === tsel.value);
      const leaf = tree && tree.nodes.find((n) => n.leaf);
      const g = leaf && document.querySelector(`[data-node="${leaf.id}"]`);
      if (g) g.dispatchEvent(new MouseEvent("click"));
      document.body.setAttribute("data-selftest", g && document.getElementById("detail-text") ? "clicked" : "failed");
    }
  }
}
