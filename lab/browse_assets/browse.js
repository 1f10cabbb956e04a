// ERF browser: the sortable tables, the clickable scatter plot and the histograms. Plain JavaScript, no libraries.
"use strict";
const Browse = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const fmt = v => (v === null || v === undefined) ? "\u2013" :
    (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(3)) : String(v));
  const el = (tag, attrs, text) => {
    const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  // Sorts rows by key; missing values go last either way.
  const sortRows = (rows, key, dir) => rows.slice().sort((p, q) => {
    const a = p[key], b = q[key];
    if (a === null || a === undefined) return (b === null || b === undefined) ? 0 : 1;
    if (b === null || b === undefined) return -1;
    return dir * (a < b ? -1 : a > b ? 1 : 0);
  });

  // A table whose head sorts it: columns [{key, label, help, cell?}], onRow(row) on click.
  function table(tableEl, rows, columns, onRow) {
    const head = el("tr"), body = tableEl.tBodies[0];
    let state = {key: null, dir: 1};
    const draw = () => {
      body.replaceChildren();
      for (const r of state.key ? sortRows(rows, state.key, state.dir) : rows) {
        const tr = el("tr", {"data-unit": r.unit, id: "u" + r.unit});
        for (const c of columns) {
          const td = el("td");
          if (c.cell) td.append(c.cell(r)); else td.textContent = fmt(r[c.key]);
          tr.append(td);
        }
        tr.addEventListener("click", () => onRow(r));
        body.append(tr);
      }
    };
    for (const c of columns) {
      const th = el("th", {title: c.help || "", "data-key": c.key}, c.label);
      if (!c.cell || c.key) th.addEventListener("click", () => {
        state = {key: c.key, dir: state.key === c.key ? -state.dir : 1};
        for (const o of head.children) o.className = "";
        th.className = state.dir > 0 ? "asc" : "desc";
        draw();
      });
      head.append(th);
    }
    tableEl.tHead.replaceChildren(head);
    draw();
  }

  const extent = vals => {
    const v = vals.filter(x => x !== null && x !== undefined && isFinite(x));
    if (!v.length) return [0, 1];
    let lo = Math.min(...v), hi = Math.max(...v);
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    const pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  };

  function axes(svg, xr, yr, xl, yl, W, H, m) {
    const sx = v => m + (v - xr[0]) / (xr[1] - xr[0]) * (W - 1.5 * m);
    const sy = v => H - m - (v - yr[0]) / (yr[1] - yr[0]) * (H - 1.5 * m);
    svg.append(el("svg:line", {x1: m, y1: H - m, x2: W - m / 2, y2: H - m, stroke: "#888"}));
    svg.append(el("svg:line", {x1: m, y1: m / 2, x2: m, y2: H - m, stroke: "#888"}));
    for (let i = 0; i <= 4; i++) {
      const xv = xr[0] + (xr[1] - xr[0]) * i / 4, yv = yr[0] + (yr[1] - yr[0]) * i / 4;
      svg.append(el("svg:text", {x: sx(xv), y: H - m + 14, "font-size": 10, "text-anchor": "middle"}, fmt(xv)));
      svg.append(el("svg:text", {x: m - 4, y: sy(yv) + 3, "font-size": 10, "text-anchor": "end"}, fmt(yv)));
    }
    svg.append(el("svg:text", {x: (W + m) / 2, y: H - 6, "font-size": 12, "text-anchor": "middle"}, xl));
    svg.append(el("svg:text", {x: 12, y: (H - m) / 2, "font-size": 12, "text-anchor": "middle",
                              transform: `rotate(-90 12 ${(H - m) / 2})`}, yl));
    return [sx, sy];
  }

  // Scatter plot of rows by two measures; a dot opens its unit.
  function scatter(svg, rows, x, y, columns, open) {
    svg.replaceChildren();
    const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), m = 48;
    const label = k => columns.find(c => c.key === k).label;
    const pts = rows.filter(r => r[x] !== null && r[y] !== null);
    const [sx, sy] = axes(svg, extent(pts.map(r => r[x])), extent(pts.map(r => r[y])), label(x), label(y), W, H, m);
    for (const r of pts) {
      const c = el("svg:circle", {cx: sx(r[x]), cy: sy(r[y]), r: 4, fill: "#1f77b4", "fill-opacity": 0.7,
                                  "data-unit": r.unit});
      c.append(el("svg:title", {}, `unit ${r.unit}: ${fmt(r[x])}, ${fmt(r[y])}`));
      c.addEventListener("click", () => open(r));
      svg.append(c);
    }
  }

  function overview(data, unitHref, unitImg) {
    const open = r => { window.location.href = unitHref(r.unit); };
    const thumb = {key: null, label: "ERF", cell: r => el("img", {src: unitImg(r.unit), class: "thumb",
                                                                  loading: "lazy", alt: "unit " + r.unit})};
    table(document.getElementById("units"), data.units, [data.columns[0], thumb, ...data.columns.slice(1)], open);
    const xs = document.getElementById("xsel"), ys = document.getElementById("ysel");
    for (const c of data.columns.slice(1)) { xs.append(el("option", {value: c.key}, c.label));
                                             ys.append(el("option", {value: c.key}, c.label)); }
    xs.value = data.x; ys.value = data.y;
    const draw = () => scatter(document.getElementById("scatter"), data.units, xs.value, ys.value, data.columns, open);
    xs.addEventListener("change", draw); ys.addEventListener("change", draw);
    draw();
  }

  // Two overlaid histograms of one measure (A blue, B red).
  function histogram(svg, a, b, label) {
    const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), m = 52, bins = 12;
    const ok = v => v.filter(x => x !== null && isFinite(x));
    const va = ok(a), vb = ok(b), xr = extent(va.concat(vb));
    const count = v => { const c = new Array(bins).fill(0);
      for (const x of v) c[Math.min(bins - 1, Math.floor((x - xr[0]) / (xr[1] - xr[0]) * bins))]++;
      return c.map(n => n / Math.max(v.length, 1)); };
    const ca = count(va), cb = count(vb), top = Math.max(...ca, ...cb, 1e-9);
    const [sx, sy] = axes(svg, xr, [0, top], label, "share of units", W, H, m);
    const mean = v => v.length ? v.reduce((p, q) => p + q, 0) / v.length : null;
    svg.append(el("svg:text", {x: m + 4, y: 14, "font-size": 11, fill: "#1f77b4"}, `A mean ${fmt(mean(va))}`));
    svg.append(el("svg:text", {x: W - 8, y: 14, "font-size": 11, fill: "#d62728", "text-anchor": "end"},
                  `B mean ${fmt(mean(vb))}`));
    const bw = (sx(xr[1]) - sx(xr[0])) / bins;
    [[ca, "#1f77b4", 0], [cb, "#d62728", bw / 2]].forEach(([c, col, off]) => c.forEach((n, i) => svg.append(
      el("svg:rect", {x: sx(xr[0]) + i * bw + off, y: sy(n), width: bw / 2, height: sy(0) - sy(n), fill: col,
                      "fill-opacity": 0.75}))));
  }

  function compare(data, keys) {
    const host = document.getElementById("hists");
    for (const ms of data.measures) {
      const svg = el("svg:svg", {width: 300, height: 210, "data-key": ms.key});
      host.append(svg);
      histogram(svg, data.a.rows.map(r => r[ms.key]), data.b.rows.map(r => r[ms.key]), ms.label);
    }
    if (!data.matched) return;
    const rows = data.a.rows.map((r, i) => {
      const o = {unit: r.unit};
      for (const k of keys) { const p = r[k], q = data.b.rows[i][k];
        o["a_" + k] = p; o["b_" + k] = q; o["d_" + k] = (p === null || q === null) ? null : q - p; }
      return o;
    });
    const img = (side, u) => { const a = el("a", {href: `../${side.slug}/unit/${u}.html`});
      a.append(el("img", {src: `../${side.slug}/img/erf_${u}.png`, class: "thumb", loading: "lazy"})); return a; };
    const cols = [{key: "unit", label: "unit"},
      {key: null, label: "A", cell: r => img(data.a, r.unit)}, {key: null, label: "B", cell: r => img(data.b, r.unit)}];
    for (const ms of data.measures.slice(0, 4)) cols.push(
      {key: "a_" + ms.key, label: ms.label + " A"}, {key: "b_" + ms.key, label: ms.label + " B"},
      {key: "d_" + ms.key, label: "B \u2212 A"});
    table(document.getElementById("pairs"), rows, cols,
          r => { window.location.href = `../${data.a.slug}/unit/${r.unit}.html`; });
  }

  return {overview, compare, table, scatter, sortRows};
})();
