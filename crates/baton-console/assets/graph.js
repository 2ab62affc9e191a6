// A run's graph, drawn as SVG: a layered layout (Sugiyama-style, simplified) computed here
// from the API's nodes and edges, left to right, atoms coloured by state.
//
// 1. Layers: each atom goes one layer right of the furthest of its predecessors (the longest
//    path from a source), so every edge points right; an atom without predecessors goes just
//    left of its first successor.
// 2. Order in a layer: definition order first, then a few sweeps that move each atom to the
//    mean position of its neighbours in the layer before (or after), which removes most
//    crossings of the graphs flows make.
// 3. Coordinates: layers are columns, atoms stacked in each, columns centred vertically;
//    edges are curves from an atom's right side to its successor's left side.

import { s } from "./ui.js";

const NODE_W = 150;
const NODE_H = 42;
const GAP_X = 46;
const GAP_Y = 14;
const PAD = 10;
const MAX_LABEL = 20;

/** Layers and order: `{layers: [[index...]...], layerOf: [n]}` for `n` nodes and `edges`. */
export function layout(n, edges) {
  const succ = Array.from({ length: n }, () => []);
  const pred = Array.from({ length: n }, () => []);
  const indegree = new Array(n).fill(0);
  for (const [a, b] of edges) {
    succ[a].push(b);
    pred[b].push(a);
    indegree[b] += 1;
  }
  // Kahn's order; the longest path from a source gives the layer.
  const layerOf = new Array(n).fill(0);
  const queue = [];
  for (let i = 0; i < n; i += 1) if (indegree[i] === 0) queue.push(i);
  const seen = new Array(n).fill(false);
  for (let head = 0; head < queue.length; head += 1) {
    const v = queue[head];
    seen[v] = true;
    for (const w of succ[v]) {
      layerOf[w] = Math.max(layerOf[w], layerOf[v] + 1);
      indegree[w] -= 1;
      if (indegree[w] === 0) queue.push(w);
    }
  }
  // An atom nothing leads to sits just before the first of its successors, not at the far
  // left: a volume used only at the end is drawn near where it is used.
  for (let i = 0; i < n; i += 1) {
    if (seen[i] && pred[i].length === 0 && succ[i].length) {
      layerOf[i] = Math.max(0, Math.min(...succ[i].map((w) => layerOf[w])) - 1);
    }
  }
  // A cycle (a store holding a shape no compiler made): its atoms go in a last layer.
  const deepest = Math.max(0, ...layerOf);
  for (let i = 0; i < n; i += 1) if (!seen[i]) layerOf[i] = seen.some(Boolean) ? deepest + 1 : 0;

  const count = Math.max(0, ...layerOf) + 1;
  const layers = Array.from({ length: n ? count : 0 }, () => []);
  for (let i = 0; i < n; i += 1) layers[layerOf[i]].push(i);

  const position = new Array(n).fill(0);
  const renumber = (layer) => layer.forEach((v, k) => { position[v] = k; });
  layers.forEach(renumber);
  const sweep = (range, neighbours) => {
    for (const l of range) {
      const layer = layers[l];
      const key = new Map();
      for (const v of layer) {
        const ns = neighbours[v].filter((w) => layerOf[w] !== l);
        key.set(v, ns.length ? ns.reduce((sum, w) => sum + position[w], 0) / ns.length : position[v]);
      }
      // Stable: atoms without a pull keep their place relative to each other.
      layer.sort((a, b) => key.get(a) - key.get(b) || position[a] - position[b]);
      renumber(layer);
    }
  };
  const down = [...layers.keys()].slice(1);
  const up = [...layers.keys()].reverse().slice(1);
  for (let round = 0; round < 4; round += 1) {
    sweep(down, pred);
    sweep(up, succ);
  }
  return { layers, layerOf, position };
}

function label(name) {
  return name.length > MAX_LABEL ? `${name.slice(0, MAX_LABEL - 1)}…` : name;
}

/**
 * The SVG of `graph` (`{nodes: [{name, kind, state}], edges: [[from, to]]}`, by name), with
 * each atom's attempt and progress from `atoms` (records by name). `onPick(name)` is called
 * when an atom is clicked.
 */
export function drawGraph(graph, atoms, onPick) {
  const nodes = graph.nodes || [];
  const index = new Map(nodes.map((node, i) => [node.name, i]));
  const edges = [];
  for (const [from, to] of graph.edges || []) {
    if (index.has(from) && index.has(to)) edges.push([index.get(from), index.get(to)]);
  }
  const { layers, layerOf } = layout(nodes.length, edges);
  const tallest = Math.max(1, ...layers.map((l) => l.length));
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y;
  const width = PAD * 2 + layers.length * NODE_W + Math.max(0, layers.length - 1) * GAP_X;
  const xy = new Array(nodes.length);
  layers.forEach((layer, l) => {
    const column = layer.length * NODE_H + (layer.length - 1) * GAP_Y;
    const top = (height - column) / 2;
    layer.forEach((v, k) => {
      xy[v] = { x: PAD + l * (NODE_W + GAP_X), y: top + k * (NODE_H + GAP_Y) };
    });
  });

  const svg = s("svg", {
    class: "graph",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `the run's graph: ${nodes.length} atoms`,
  });
  const stateOf = (i) => (atoms.get(nodes[i].name) || nodes[i]).state || "PENDING";
  for (const [a, b] of edges) {
    const from = xy[a];
    const to = xy[b];
    const x1 = from.x + NODE_W;
    const y1 = from.y + NODE_H / 2;
    const x2 = to.x;
    const y2 = to.y + NODE_H / 2;
    const bend = Math.max(GAP_X / 2, (x2 - x1) / 2);
    const done = stateOf(a) === "SUCCESS" && stateOf(b) !== "PENDING";
    svg.appendChild(s("path", {
      class: done ? "edge done" : "edge",
      d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
      "marker-end": "url(#arrow)",
    }));
  }
  svg.prepend(s("defs", {}, s("marker", {
    id: "arrow", viewBox: "0 0 8 8", refX: 8, refY: 4, markerWidth: 7, markerHeight: 7, orient: "auto",
  }, s("path", { d: "M0,0 L8,4 L0,8 z", fill: "#a8b2c2" }))));

  nodes.forEach((node, i) => {
    const record = atoms.get(node.name) || {};
    const state = record.state || node.state || "PENDING";
    const { x, y } = xy[i];
    const parts = [state];
    if (record.attempt > 1) parts.push(`attempt ${record.attempt}`);
    if (node.kind === "retry") parts.push("retry");
    const g = s("g", {
      class: `node s-${state} kind-${node.kind || "task"}`,
      "data-atom": node.name,
      "data-state": state,
      "data-layer": layerOf[i],
      transform: `translate(${x},${y})`,
      tabindex: 0,
      onclick: () => onPick && onPick(node.name),
      onkeydown: (e) => { if (e.key === "Enter" && onPick) onPick(node.name); },
    },
    s("title", {}, `${node.name}: ${state}`),
    s("rect", { class: "box", width: NODE_W, height: NODE_H, rx: 7 }),
    s("text", { x: 10, y: 17 }, label(node.name)),
    s("text", { class: "sub", x: 10, y: 32 }, parts.join(" · ")));
    const progress = Number(record.progress) || 0;
    if (state === "RUNNING" && progress > 0) {
      g.appendChild(s("rect", {
        class: "bar", x: 1, y: NODE_H - 4, height: 3, width: Math.max(2, (NODE_W - 2) * Math.min(1, progress)),
      }));
    }
    svg.appendChild(g);
  });
  return svg;
}

/**
 * The history as a timeline: one row per atom, a bar for each stretch of time it spent in a
 * state (from one of its transitions to the next), coloured by that state. `end` closes the
 * last stretches (now, for a run still going; its last change, for one at rest).
 */
export function drawTimeline(history, names, end) {
  const rows = new Map(names.map((n) => [n, []]));
  const open = new Map();
  let first = null;
  let last = null;
  for (const t of history) {
    const at = new Date(t.at).getTime();
    if (first === null) first = at;
    last = at;
    if (t.change.subject !== "atom") continue;
    const name = t.change.atom;
    if (!rows.has(name)) rows.set(name, []);
    const prev = open.get(name);
    if (prev) rows.get(name).push({ ...prev, to: at });
    open.set(name, { state: t.change.to, from: at, attempt: t.change.attempt });
  }
  if (first === null) return null;
  const stop = Math.max(last, end || last);
  for (const [name, seg] of open) rows.get(name).push({ ...seg, to: stop, open: true });

  const LABEL_W = 150;
  const ROW_H = 20;
  const PLOT_W = 720;
  const span = Math.max(1, stop - first);
  const names2 = [...rows.keys()].filter((n) => rows.get(n).length);
  const height = 24 + names2.length * ROW_H;
  const width = LABEL_W + PLOT_W + 20;
  const svg = s("svg", {
    class: "gantt", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "the run's history as a timeline",
  });
  const xOf = (t) => LABEL_W + ((t - first) / span) * PLOT_W;
  for (let k = 0; k <= 4; k += 1) {
    const x = LABEL_W + (k / 4) * PLOT_W;
    svg.appendChild(s("line", { class: "tick", x1: x, x2: x, y1: 14, y2: height }));
    svg.appendChild(s("text", {
      class: "axis", x, y: 10, "text-anchor": k === 0 ? "start" : k === 4 ? "end" : "middle",
    }, `+${((span * k) / 4 / 1000).toFixed(span < 4000 ? 2 : 1)} s`));
  }
  names2.forEach((name, r) => {
    const y = 18 + r * ROW_H;
    svg.appendChild(s("text", { x: 0, y: y + 12 }, label(name)));
    for (const seg of rows.get(name)) {
      // Resting states after the last change are thin: the atom is done, not busy.
      const resting = seg.open && !["RUNNING", "REVERTING", "RETRYING"].includes(seg.state);
      const x = xOf(seg.from);
      const w = Math.max(1.5, xOf(seg.to) - x);
      svg.appendChild(s("rect", {
        class: `seg s-${seg.state}`, x, y: resting ? y + 6 : y + 2, width: w, height: resting ? 4 : ROW_H - 6, rx: 2,
      }, s("title", {}, `${name}: ${seg.state} (attempt ${seg.attempt}), ${((seg.to - seg.from) / 1000).toFixed(2)} s`)));
    }
  });
  return svg;
}
