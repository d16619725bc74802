// featureflow feature pages: data arrives as scripts (data/*.js call FF.<kind>(payload)), so the
// site works from file:// as well as over HTTP. No dependency beyond plotly.js (histograms only).
"use strict";
var FF = {
  loaded: {}, chunks: {}, W: {}, V: null, I: null, C: null,
  vocab: function (v) { FF.V = v; },
  index: function (x) { FF.I = x; },
  cases: function (x) { FF.C = x; },
  windows: function (x) { FF.W[x.node] = x; },
  chunk: function (x) { FF.chunks[x.node + "/" + x.chunk] = x.features; },
};

FF.need = function (src) {
  if (!FF.loaded[src]) {
    FF.loaded[src] = new Promise(function (ok, fail) {
      var s = document.createElement("script");
      s.src = src;
      s.onload = ok;
      s.onerror = function () { fail(new Error("could not load " + src + " (is the site complete?)")); };
      document.head.appendChild(s);
    });
  }
  return FF.loaded[src];
};

FF.isCrosscoder = function (node) { return Object.prototype.hasOwnProperty.call(FF.I.crosscoders || {}, node); };
// a site node's name as a reader reads it: an edge's crosscoder is "crosscoder base→packages"
FF.label = function (node) { return FF.isCrosscoder(node) ? "crosscoder " + FF.I.crosscoders[node].replace("->", "→") : node; };
FF.base = function () { return Promise.all([FF.need("data/vocab.js"), FF.need("data/index.js")]); };

FF.feature = async function (node, f) {
  await FF.base();
  if (FF.I.nodes.indexOf(node) < 0 && !FF.isCrosscoder(node)) throw new Error("unknown node '" + node + "'; this lineage has " + FF.I.nodes.join(", "));
  if (!(f >= 0 && f < FF.I.d_sae[node])) throw new Error("feature " + f + " is out of range; " + node + " has features 0 to " + (FF.I.d_sae[node] - 1));
  var c = Math.floor(f / FF.I.chunk);
  await Promise.all([FF.need("data/" + node + "/windows.js"), FF.need("data/" + node + "/" + String(c).padStart(5, "0") + ".js")]);
  return FF.chunks[node + "/" + c][f - c * FF.I.chunk];
};

// --- small DOM helpers (text always through textContent: token strings are data, not HTML) ---
FF.el = function (tag, attrs) {
  var e = document.createElement(tag);
  for (var k in attrs || {}) {
    if (k === "text") e.textContent = attrs[k]; else if (k === "cls") e.className = attrs[k]; else e.setAttribute(k, attrs[k]);
  }
  for (var i = 2; i < arguments.length; i++) {
    var c = arguments[i];
    if (c === null || c === undefined) continue;
    e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return e;
};
FF.show = function (id) { return (FF.V[id] || "").replace(/\n/g, "↵").replace(/\t/g, "⇥"); };
FF.tok = function (id) { return FF.el("span", { cls: "tok", text: FF.show(id), title: "token " + id }); };
FF.fmt = function (x, d) { return x === null || x === undefined ? "–" : Number(x).toPrecision(d || 3); };
FF.pct = function (x) { return x === null ? "–" : (100 * x).toPrecision(3) + "%"; };
FF.link = function (node, f, label) { return FF.el("a", { href: "feature.html#node=" + encodeURIComponent(node) + "&f=" + f, text: label || FF.label(node) + " #" + f }); };
FF.params = function () {
  var out = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
    if (!kv) return;
    var i = kv.indexOf("=");
    out[decodeURIComponent(i < 0 ? kv : kv.slice(0, i))] = i < 0 ? "" : decodeURIComponent(kv.slice(i + 1));
  });
  return out;
};
FF.fail = function (where, err) {
  where.textContent = "";
  where.appendChild(FF.el("p", { cls: "error", text: String(err && err.message || err) }));
  FF.done();
};
// Marks the page as drawn (body[data-ready]), for people's scripts and the headless-browser test.
FF.done = function () { document.body.setAttribute("data-ready", "1"); };

// One context: the window's tokens around the position, each shaded by the feature's activation.
FF.context = function (node, ref, acts, scale, radius) {
  var w = FF.W[node], ctx = w.context, win = ref[0], at = ref[1];
  radius = radius || 12;
  var values = {};
  (acts[String(win)] || []).forEach(function (p) { values[p[0]] = p[1]; });
  var line = FF.el("div", { cls: "ctx" }, FF.el("span", { cls: "val", text: FF.fmt(ref[2]) }));
  for (var o = Math.max(0, at - radius); o < Math.min(ctx, at + radius + 1); o++) {
    var id = w.ids[win * ctx + o], v = values[o] || 0;
    var s = FF.el("span", { text: FF.show(id), title: JSON.stringify(FF.V[id]) + " → " + FF.fmt(v) });
    if (v > 0) s.style.background = "rgba(255, 140, 0, " + Math.min(1, 0.12 + 0.88 * v / scale).toFixed(3) + ")";
    if (o === at) s.className = "centre";
    line.appendChild(s);
  }
  return line;
};

FF.contexts = function (rec, refs, n) {
  var box = FF.el("div");
  refs.slice(0, n || refs.length).forEach(function (r) { box.appendChild(FF.context(rec.node, r, rec.acts, rec.max_activation || 1)); });
  if (!refs.length) box.appendChild(FF.el("p", { cls: "muted", text: "none" }));
  return box;
};

FF.table = function (head, rows) {
  var t = FF.el("table"), tr = FF.el("tr");
  head.forEach(function (h) { tr.appendChild(FF.el("th", { text: h })); });
  t.appendChild(FF.el("thead", {}, tr));
  var body = FF.el("tbody");
  rows.forEach(function (r) {
    var row = FF.el("tr");
    r.forEach(function (c) { row.appendChild(c instanceof Node ? FF.el("td", {}, c) : FF.el("td", { cls: typeof c === "number" ? "num" : "", text: c })); });
    body.appendChild(row);
  });
  t.appendChild(body);
  return t;
};

// --- the feature page -------------------------------------------------------------------------
FF.featurePage = function () {
  var render = async function () {
    var main = document.getElementById("main"), p = FF.params(), f = parseInt(p.f, 10);
    var nav = document.getElementById("nav");
    if (nav) nav.textContent = "";  // an invalid ID below must not keep the previous feature's neighbours
    try {
      var rec = await FF.feature(p.node, f);
      main.textContent = "";
      document.title = FF.I.lineage + ": " + FF.label(p.node) + " #" + f;
      if (!rec) { main.appendChild(FF.el("p", { cls: "error", text: p.node + " #" + f + " never fired on the held-out tokens (a dead feature): no page." })); return; }
      FF.renderFeature(main, rec);
      FF.done();
    } catch (err) { FF.fail(main, err); }
  };
  window.addEventListener("hashchange", render);
  render();
};

FF.renderFeature = function (main, rec) {
  var node = rec.node, f = rec.feature;
  main.appendChild(FF.el("h1", {}, FF.label(node) + " · " + (rec.crosscoder ? "latent " : "feature ") + f + " ", FF.el("span", { cls: "muted", text: "top token " }), FF.tok(rec.top_token)));
  if (rec.explanation) {
    main.appendChild(FF.el("p", { cls: "explanation" }, FF.el("strong", { text: "LLM explanation: " }), rec.explanation.text,
      FF.el("span", { cls: "muted", text: "  (simulation score " + FF.fmt(rec.explanation.score) + ")" })));
  }
  var nav = document.getElementById("nav");
  if (nav) { nav.textContent = ""; if (f > 0) nav.appendChild(FF.link(node, f - 1, "← #" + (f - 1))); nav.appendChild(document.createTextNode(" ")); if (f + 1 < FF.I.d_sae[node]) nav.appendChild(FF.link(node, f + 1, "#" + (f + 1) + " →")); }
  var grid = FF.el("div", { cls: "grid" });
  grid.appendChild(FF.el("div", {},
    FF.el("h2", { text: "Activity" }),
    FF.table(["", ""], [
      ["density", FF.pct(rec.density) + " (" + rec.fired.toLocaleString() + " of " + rec.tokens.toLocaleString() + " held-out tokens)"],
      ["max activation", FF.fmt(rec.max_activation)],
      ["LLR of the top-token hypothesis", FF.fmt(rec.llr_top_token)],
    ]),
    FF.el("div", { id: "hist" })));
  grid.appendChild(FF.el("div", {}, FF.el("h2", { text: "Top tokens (mean activation over all occurrences)" }),
    FF.table(["token", "mean", "occurrences"], rec.top_tokens.map(function (t) { return [FF.tok(t[0]), FF.fmt(t[1]), t[2]]; }))));
  var logitTable = function (title, logits) {
    return FF.el("div", {}, FF.el("h2", { text: title }),
      FF.table(["promoted", "", "suppressed", ""], logits.top.map(function (t, i) {
        var b = logits.bottom[i] || [0, null];
        return [FF.tok(t[0]), FF.fmt(t[1]), FF.tok(b[0]), FF.fmt(b[1])];
      })));
  };
  if (rec.crosscoder) {
    // a crosscoder latent writes a vector into each model: its logit effects in each, through that model's own unembedding
    grid.appendChild(logitTable("Logit effects in " + rec.crosscoder.parent + " (direct path, median-centred)", rec.crosscoder.logits_parent));
    grid.appendChild(logitTable("Logit effects in " + rec.crosscoder.child, rec.logits));
  } else {
    grid.appendChild(logitTable("Logit effects (direct path, median-centred)", rec.logits));
  }
  main.appendChild(grid);
  if (rec.crosscoder) FF.renderCrosscoder(main, rec); else FF.renderLineage(main, rec);
  main.appendChild(FF.el("h2", { text: "Top activating contexts" }));
  main.appendChild(FF.el("p", { cls: "muted legend" }, "Each token is shaded by this ",
    rec.crosscoder ? "latent's" : "feature's", " activation on it (",
    FF.el("span", { cls: "swatch", style: "background: rgba(255, 140, 0, 0.25)" }, "weak"), " ",
    FF.el("span", { cls: "swatch", style: "background: rgba(255, 140, 0, 1)" }, "strongest"),
    ", relative to its maximum; unshaded: zero); the ", FF.el("span", { cls: "swatch centre" }, "boxed"),
    " token is the one the example was chosen at, its activation on the left. Hover a token for its text and value."));
  main.appendChild(FF.contexts(rec, rec.contexts.top));
  main.appendChild(FF.el("h2", { text: "Samples by activation quantile (highest first)" }));
  var groups = rec.contexts.quantiles.slice().reverse().map(function (g) { return g.slice().reverse(); });
  groups.forEach(function (g, i) {
    if (!g.length) return;
    main.appendChild(FF.el("p", { cls: "muted", text: "quantile group " + (groups.length - i) + " of " + groups.length + ": " + FF.fmt(g[g.length - 1][2]) + " – " + FF.fmt(g[0][2]) }));
    main.appendChild(FF.contexts(rec, g));
  });
  main.appendChild(FF.el("h2", { text: "Contexts where it does not fire (random)" }));
  main.appendChild(FF.contexts(rec, rec.contexts.inactive));
  if (window.Plotly) {
    var edges = FF.I.hist_edges_log10, x = [], y = [];
    rec.histogram.forEach(function (b) { x.push((edges[b[0]] + edges[b[0] + 1]) / 2); y.push(b[1]); });
    Plotly.newPlot("hist", [{ type: "bar", x: x, y: y, marker: { color: "#ff8c00" } }],
      { margin: { t: 24, l: 48, r: 8, b: 40 }, title: { text: "activation histogram (non-zero)", font: { size: 12 } },
        xaxis: { title: { text: "log10 activation" } }, yaxis: { title: { text: "tokens" } }, bargap: 0.05 },
      { displayModeBar: false, responsive: true });
  }
};

// A crosscoder latent: one encoder over both models' activations, a decoder vector per model. Its class comes from
// the relative decoder norm Δ (1: only the parent's decoder is used, 0: only the child's); ν (Latent Scaling) says
// how much of a model-specific latent the other model still reconstructs (0: nothing).
FF.renderCrosscoder = function (main, rec) {
  var c = rec.crosscoder;
  main.appendChild(FF.el("h2", { text: "Crosscoder on " + c.parent + " → " + c.child }));
  var sae = function (side) {
    var s = c.sae[side], node = c[side];
    if (s[1] === null) return FF.el("span", { cls: "muted", text: "none" });
    return FF.el("span", {}, FF.link(node, s[0]), " (r " + FF.fmt(s[1]) + (s[1] > FF.I.threshold ? ", above the flow's bar " : ", below the flow's bar ") + FF.I.threshold + ")");
  };
  main.appendChild(FF.table(["", ""], [
    ["class", FF.el("span", { cls: c["class"], text: c["class"].replace("_", "-") })],
    ["relative decoder norm Δ", FF.fmt(c.delta) + "  (1: only " + c.parent + "'s decoder, 0: only " + c.child + "'s, 0.5: equal)"],
    ["decoder norms (" + c.parent + ", " + c.child + ")", FF.fmt(c.norm_parent) + ", " + FF.fmt(c.norm_child)],
    ["cosine of its two decoder vectors", FF.fmt(c.cosine)],
    ["Latent Scaling ν (error, reconstruction)", c.nu_error === null ? "only for parent- and child-only latents" : FF.fmt(c.nu_error) + ", " + FF.fmt(c.nu_recon) + "  (how much of it the other model holds: 0 none, 1 all)"],
    ["best-correlated SAE feature in " + c.parent, sae("parent")],
    ["best-correlated SAE feature in " + c.child, sae("child")],
  ]));
  main.appendChild(FF.el("p", { cls: "muted", text: "The contexts below are held-out windows of the data both models share; the latent's activation is one number per token, read from both models' activations at once." }));
};

FF.renderLineage = function (main, rec) {
  var L = rec.lineage;
  main.appendChild(FF.el("h2", { text: "Lineage" }));
  if (!L.parents.length && !L.children.length) { main.appendChild(FF.el("p", { cls: "muted", text: "no edges in this lineage" })); return; }
  var partners = function (node, list, withCos) {
    var box = FF.el("span");
    (list || []).slice(0, 3).forEach(function (p, i) {
      if (i) box.appendChild(document.createTextNode(", "));
      box.appendChild(FF.link(node, p[0]));
      box.appendChild(document.createTextNode(withCos ? " (r " + FF.fmt(p[1]) + ", cos " + FF.fmt(p[2]) + ")" : " (cos " + FF.fmt(p[1]) + ")"));
    });
    return box;
  };
  var rows = [], edges = L.parents.concat(L.children);
  // flow.warm_start: the child's SAE trained from this SAE's dictionary; its feature of the same index, beside the matched partners
  var warm = edges.some(function (e) { return e.warm; });
  edges.forEach(function (e) {
    var row = [e.edge, FF.el("span", { cls: e.status, text: e.status }), partners(e.node, e.by_r, true), partners(e.node, e.by_cos, false)];
    if (warm) {
      row.push(e.warm ? FF.el("span", {}, FF.el("span", { cls: e.warm.status, text: e.warm.status }),
        " (r " + FF.fmt(e.warm.r) + ", cos " + FF.fmt(e.warm.cos) + ")") : "");
    }
    rows.push(row);
  });
  main.appendChild(FF.table(["edge", "status", "best partners by activation r", "by decoder cosine"]
    .concat(warm ? ["warm-started child SAE: feature #" + rec.feature + " (r, decoder cos)"] : []), rows));
  if (L.seed) {
    // flow.null_seeds: the node's SAE retrained with other seeds on the same store; a feature they all reproduce
    // above the threshold is one SAE training finds again, so its fate on an edge is not SAE noise
    main.appendChild(FF.el("p", {}, FF.el("span", { cls: L.seed.reproducible ? "persists" : "disappears",
      text: L.seed.reproducible ? "reproducible across seeds" : "not reproducible across seeds" }),
      ": best partner in the same model's SAE with another seed " + L.seed.partners.map(function (p) {
        return "(seed " + p[0] + ") #" + p[1] + " at r " + FF.fmt(p[2]); }).join(", ") +
      "; the bar is r " + FF.I.threshold + ". A feature SAE training does not find again may \"disappear\" or \"emerge\" on an edge without fine-tuning changing it."));
  }
  if (L.trajectories.length) {
    main.appendChild(FF.el("p", { cls: "muted", text: "Trajectories (hop by hop through the best partner above r " + FF.I.threshold + "):" }));
    var ul = FF.el("ul");
    L.trajectories.forEach(function (t) {
      var li = FF.el("li");
      t.nodes.forEach(function (n, i) {
        if (i) li.appendChild(document.createTextNode(" →(r " + FF.fmt(t.r[i - 1]) + ") "));
        li.appendChild(n === rec.node && t.features[i] === rec.feature ? FF.el("strong", { text: n + " #" + t.features[i] }) : FF.link(n, t.features[i]));
      });
      li.appendChild(FF.el("span", { cls: "muted", text: t.reaches_end ? "  (to the end of " + t.path + ")" : "  (disappears after " + t.nodes[t.nodes.length - 1] + " on " + t.path + ")" }));
      ul.appendChild(li);
    });
    main.appendChild(ul);
  }
};

// --- the index ---------------------------------------------------------------------------------
FF.indexPage = async function () {
  var count = document.getElementById("count");
  try { await FF.base(); } catch (err) { FF.fail(count, err); return; }
  var I = FF.I, p = FF.params(), sel = {};
  ["node", "origin", "edge", "status", "q", "mind", "thr"].forEach(function (k) { sel[k] = document.getElementById(k); });
  // the threshold slider: statuses and origins re-derived in the browser from each feature's best r on each edge
  // (a parent feature persists when its best child partner's r exceeds the bar, a child feature emerged when none
  // of its parents' does), as featureflow_dagster/flow/classify.py does at the flow's own threshold
  var thr = I.threshold, thrOut = document.getElementById("thrv");
  if (sel.thr) { sel.thr.value = String(I.threshold); if (!I.flow) sel.thr.parentNode.style.display = "none"; }
  var statusAt = function (node, edge, f, stored) {
    if (!I.flow || !I.flow[edge] || thr === I.threshold) return stored;
    var side = edge.indexOf(node + "->") === 0 ? "parent" : "child", r = I.flow[edge][side][f];
    if (r === null || r === undefined) return stored;
    return side === "parent" ? (r > thr ? "persists" : "disappears") : (r > thr ? "persisted" : "emerged");
  };
  var originAt = function (node, i, R) {
    var into = Object.keys(R.status).filter(function (e) { return e.slice(-(node.length + 2)) === "->" + node; });
    if (!into.length || thr === I.threshold || R.origin[i] === "dead") return R.origin[i];
    var st = into.map(function (e) { return statusAt(node, e, R.feature[i], R.status[e][i]); });
    return st.indexOf("persisted") >= 0 ? "persisted" : st.indexOf("emerged") >= 0 ? "emerged" : R.origin[i];
  };
  FF.flowCounts = function (t) {  // per edge at r > t: parent features persisting / disappearing, child features emerged
    var out = {};
    Object.keys(I.flow || {}).forEach(function (e) {
      var c = { persists: 0, disappears: 0, persisted: 0, emerged: 0 };
      I.flow[e].parent.forEach(function (r) { if (r !== null) c[r > t ? "persists" : "disappears"]++; });
      I.flow[e].child.forEach(function (r) { if (r !== null) c[r > t ? "persisted" : "emerged"]++; });
      out[e] = c;
    });
    return out;
  };
  var showCounts = function () {
    var box = document.getElementById("flowcounts");
    if (!box || !I.flow) return;
    if (thrOut) thrOut.textContent = thr.toFixed(2) + (thr === I.threshold ? " (the flow's)" : "");
    var c = FF.flowCounts(thr);
    box.textContent = "At r > " + thr.toFixed(2) + ": " + Object.keys(c).map(function (e) {
      return e.replace("->", " → ") + " " + c[e].persists + " persist, " + c[e].disappears + " disappear, " + c[e].emerged + " emerged";
    }).join(" · ");
    box.setAttribute("data-threshold", thr.toFixed(2));
  };
  I.nodes.forEach(function (n) { sel.node.appendChild(FF.el("option", { text: n })); });
  Object.keys(I.crosscoders || {}).forEach(function (n) { sel.node.appendChild(FF.el("option", { value: n, text: FF.label(n) })); });
  // the origins and statuses a feature can have come with the data (featureflow_dagster/flow.py names them);
  // a crosscoder's latents have a class instead of an origin
  var fillOrigins = function () {
    var keep = sel.origin.value, list = FF.isCrosscoder(sel.node.value) ? I.classes : I.origins;
    while (sel.origin.options.length > 1) sel.origin.remove(1);
    list.forEach(function (o) { sel.origin.appendChild(FF.el("option", { text: o })); });
    sel.origin.value = list.indexOf(keep) >= 0 ? keep : "";
  };
  I.statuses.forEach(function (s) { sel.status.appendChild(FF.el("option", { text: s })); });
  // the most interpretable first: by the LLM explanation's score where auto-interp ran, else by the LLR of the top-token
  // hypothesis (a feature that fires on one token and rarely elsewhere); density sorted the densest, least legible first
  var sortKey = null, sortDesc = true;
  var fillEdges = function () {
    fillOrigins();
    var keep = sel.edge.value;
    while (sel.edge.options.length > 1) sel.edge.remove(1);
    Object.keys(I.rows[sel.node.value].status).forEach(function (e) { sel.edge.appendChild(FF.el("option", { text: e })); });
    sel.edge.value = Array.prototype.some.call(sel.edge.options, function (o) { return o.value === keep; }) ? keep : "";
  };
  var draw = function () {
    var node = sel.node.value, R = I.rows[node], edges = Object.keys(R.status), extra = Object.keys(R.extra || {});
    if (sortKey === null || (sortKey === "score" && !R.score)) sortKey = R.score ? "score" : "LLR";
    var q = sel.q.value, mind = parseFloat(sel.mind.value) || 0, idx = [];
    var S = {}, O = [];
    edges.forEach(function (e) { S[e] = R.feature.map(function (f, i) { return statusAt(node, e, f, R.status[e][i]); }); });
    for (var j = 0; j < R.feature.length; j++) O.push(originAt(node, j, R));
    for (var i = 0; i < R.feature.length; i++) {
      if (sel.origin.value && O[i] !== sel.origin.value) continue;
      if (sel.status.value) {
        var on = sel.edge.value ? [sel.edge.value] : edges;
        if (!on.some(function (e) { return S[e][i] === sel.status.value; })) continue;
      }
      if (q && FF.V[R.top_token[i]].indexOf(q) < 0) continue;
      if (R.density[i] < mind) continue;
      idx.push(i);
    }
    var key = function (i) {
      if (sortKey === "top token") return FF.V[R.top_token[i]];
      if (extra.indexOf(sortKey) >= 0) return R.extra[sortKey][i];
      if (sortKey.indexOf("r ") === 0) return R.best_r[sortKey.slice(2)][i];
      return { feature: R.feature, density: R.density, max: R.max, LLR: R.llr, origin: R.origin, "class": R.origin, explanation: R.explanation, score: R.score }[sortKey][i];
    };
    idx.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === y) return 0; if (x === null) return 1; if (y === null) return -1;
      return (x < y ? -1 : 1) * (sortDesc ? -1 : 1);
    });
    var head = ["feature", "density", "max", "top token", "LLR", FF.isCrosscoder(node) ? "class" : "origin"].concat(edges).concat(edges.map(function (e) { return "r " + e; })).concat(extra)
      .concat(R.explanation ? ["explanation", "score"] : []);
    var thead = document.querySelector("#table thead"), tbody = document.querySelector("#table tbody");
    thead.textContent = ""; tbody.textContent = "";
    var tr = FF.el("tr");
    head.forEach(function (h) {
      var th = FF.el("th", { text: h + (h === sortKey ? (sortDesc ? " ▼" : " ▲") : "") });
      th.onclick = function () { sortDesc = sortKey === h ? !sortDesc : true; sortKey = h; draw(); };
      tr.appendChild(th);
    });
    thead.appendChild(tr);
    var shown = idx.slice(0, 500);
    shown.forEach(function (i) {
      var row = FF.el("tr", {},
        FF.el("td", {}, FF.link(node, R.feature[i], "#" + R.feature[i])),
        FF.el("td", { cls: "num", text: FF.pct(R.density[i]) }), FF.el("td", { cls: "num", text: FF.fmt(R.max[i]) }),
        FF.el("td", {}, FF.tok(R.top_token[i])), FF.el("td", { cls: "num", text: FF.fmt(R.llr[i]) }),
        FF.el("td", { cls: O[i], text: O[i] }));
      edges.forEach(function (e) { row.appendChild(FF.el("td", { cls: S[e][i], text: S[e][i] })); });
      edges.forEach(function (e) { row.appendChild(FF.el("td", { cls: "num", text: FF.fmt(R.best_r[e][i]) })); });
      extra.forEach(function (e) { row.appendChild(FF.el("td", { cls: "num", text: FF.fmt(R.extra[e][i]) })); });
      if (R.explanation) {
        row.appendChild(FF.el("td", { text: R.explanation[i] }));
        row.appendChild(FF.el("td", { cls: "num", text: FF.fmt(R.score[i]) }));
      }
      tbody.appendChild(row);
    });
    count.textContent = idx.length.toLocaleString() + " of " + R.feature.length.toLocaleString() + (FF.isCrosscoder(node) ? " live latents of " : " live features of ") + FF.label(node) +
      (idx.length > shown.length ? " (first " + shown.length + " shown; filter or sort to see others)" : "");
    var h = "node=" + encodeURIComponent(node);
    ["origin", "edge", "status", "q"].forEach(function (k) { if (sel[k].value) h += "&" + k + "=" + encodeURIComponent(sel[k].value); });
    if (thr !== I.threshold) h += "&r=" + thr.toFixed(2);
    history.replaceState(null, "", "#" + h);
    showCounts();
    FF.done();
  };
  var apply = function () {
    var p = FF.params();
    sel.node.value = I.nodes.indexOf(p.node) >= 0 || FF.isCrosscoder(p.node) ? p.node : I.nodes[0];
    fillEdges();
    ["origin", "edge", "status", "q"].forEach(function (k) { sel[k].value = p[k] || ""; });
    var asked = parseFloat(p.r);
    thr = asked > 0 && asked < 1 ? asked : I.threshold;
    if (sel.thr) sel.thr.value = String(thr);
    draw();
  };
  sel.node.onchange = function () { fillEdges(); draw(); };
  ["origin", "edge", "status"].forEach(function (k) { sel[k].onchange = draw; });
  ["q", "mind"].forEach(function (k) { sel[k].oninput = draw; });
  if (sel.thr) sel.thr.oninput = function () { thr = parseFloat(sel.thr.value); draw(); };
  window.addEventListener("hashchange", apply);
  apply();
};

// --- case studies ----------------------------------------------------------------------------
FF.casesPage = async function () {
  var main = document.getElementById("main");
  try {
    await Promise.all([FF.base(), FF.need("data/cases.js")]);
    main.textContent = "";
    var block = async function (box, node, f, label) {
      var rec = await FF.feature(node, f);
      var head = FF.el("p", {}, FF.el("strong", {}, FF.link(node, f)), " " + (label || "") + " · top token ");
      if (!rec) { box.appendChild(FF.el("p", { cls: "muted", text: node + " #" + f + " did not fire on the held-out tokens" })); return; }
      head.appendChild(FF.tok(rec.top_token));
      head.appendChild(document.createTextNode(" · LLR " + FF.fmt(rec.llr_top_token) + " · density " + FF.pct(rec.density)));
      box.appendChild(head);
      box.appendChild(FF.contexts(rec, rec.contexts.top, 5));
    };
    main.appendChild(FF.el("h2", { text: "Persisting through every model of a path" }));
    for (var path in FF.C.persisting) {
      var c = FF.C.persisting[path], box = FF.el("div", { cls: "case" }, FF.el("h3", { text: path.split(">").join(" → ") }));
      main.appendChild(box);
      if (!c) { box.appendChild(FF.el("p", { cls: "muted", text: "no base feature persists through every model of this path" })); continue; }
      box.appendChild(FF.el("p", { cls: "muted", text: "mean r " + FF.fmt(c.mean_r) + "; hops " + c.r.map(function (r) { return FF.fmt(r); }).join(", ") }));
      for (var i = 0; i < c.nodes.length; i++) await block(box, c.nodes[i], c.features[i], i ? "(r " + FF.fmt(c.r[i - 1]) + " with " + c.nodes[i - 1] + ")" : "");
    }
    main.appendChild(FF.el("h2", { text: "Disappearing on an edge" }));
    for (var edge in FF.C.disappearing) {
      var d = FF.C.disappearing[edge], box2 = FF.el("div", { cls: "case" }, FF.el("h3", { text: edge.replace("->", " → ") }));
      main.appendChild(box2);
      if (!d) { box2.appendChild(FF.el("p", { cls: "muted", text: "no candidate disappears on this edge" })); continue; }
      await block(box2, d.parent, d.feature, "in " + d.parent);
      await block(box2, d.child, d.best_partner, "its best partner in " + d.child + " (r " + FF.fmt(d.best_r) + ", below " + FF.I.threshold + ")");
    }
    FF.done();
  } catch (err) { FF.fail(main, err); }
};
