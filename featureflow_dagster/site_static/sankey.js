
var plot = document.getElementById('{plot_id}');
plot.on('plotly_click', function (d) {
  var p = d.points && d.points[0];
  if (p && p.customdata && typeof p.customdata === 'string' && p.customdata.indexOf('index.html') === 0) { window.location.href = p.customdata; }
});
var links = plot.data[0].node.customdata, labels = plot.data[0].node.label;
var nav = document.createElement('nav'); nav.id = 'sankey-links';
nav.innerHTML = '<header style="font-family:system-ui,sans-serif;display:flex;gap:18px;border-bottom:1px solid #ddd;padding:10px 0;margin-bottom:8px">' +
  '<strong>featureflow · ' + String((plot.layout.title && plot.layout.title.text) || '').split(':')[0] + '</strong><a href="../index.html">home</a><a href="index.html">features</a>' +
  '<a href="sankey.html">feature flow</a><a href="case_studies.html">case studies</a></header>' +
  '<p style="font-family:sans-serif"><a href="index.html">all features</a> · the features behind each node (or click a node):</p>';
var ul = document.createElement('ul'); ul.style.cssText = 'font-family:sans-serif;columns:3';
links.forEach(function (href, i) { var li = document.createElement('li'); var a = document.createElement('a'); a.href = href; a.textContent = labels[i]; li.appendChild(a); ul.appendChild(li); });
nav.appendChild(ul); document.body.insertBefore(nav, document.body.firstChild);

// The threshold slider: every link re-derived in the browser at another bar from each feature's best r per edge
// (data/index.js), as featureflow_dagster/flow/lineage_flow.py's flow_volumes does at the flow's own threshold: a
// child feature traces to the parent with the highest r above the bar (the first on a tie), else it emerged unless
// dead on every incoming edge; a parent feature is lost on an edge when its best r there is at most the bar.
var meta = plot.layout.meta || {};
var box = document.createElement('p'); box.style.cssText = 'font-family:sans-serif';
box.innerHTML = '<label>threshold r &gt; <input id="thr" type="range" min="0.5" max="0.99" step="0.01"> <output id="thrv"></output></label> ' +
  '<span id="sankey-counts" style="color:#555"></span>';
nav.appendChild(box);
var ready = function () { document.body.setAttribute('data-ready', '1'); };
window.FF = window.FF || {};
FF.index = function (x) { FF.I = x; };
var s = document.createElement('script'); s.src = 'data/index.js';
s.onerror = function () { box.style.display = 'none'; ready(); };
s.onload = function () {
  var flow = FF.I && FF.I.flow, slider = document.getElementById('thr'), out = document.getElementById('thrv');
  if (!flow || !meta.links) { box.style.display = 'none'; ready(); return; }
  var parents = {};
  meta.links.forEach(function (l) { if (l.kind === 'traced') (parents[l.target] = parents[l.target] || []).push(l.source); });
  var volumes = function (t) {
    var traced = {}, emerged = {};
    Object.keys(parents).forEach(function (c) {
      var ps = parents[c], n = flow[ps[0] + '->' + c].child.length;
      emerged[c] = 0;
      ps.forEach(function (p) { traced[p + '->' + c] = 0; });
      for (var f = 0; f < n; f++) {
        var best = -Infinity, owner = null, dead = true;
        ps.forEach(function (p) {
          var r = flow[p + '->' + c].child[f];
          if (r !== null && r !== undefined) dead = false;
          if (r !== null && r !== undefined && r > t && r > best) { best = r; owner = p; }
        });
        if (owner !== null) traced[owner + '->' + c]++; else if (!dead) emerged[c]++;
      }
    });
    return meta.links.map(function (l) {
      if (l.kind === 'traced') return traced[l.source + '->' + l.target];
      if (l.kind === 'emerged') return emerged[l.target];
      var child = l.target.split(' \u2192 ')[1], n = 0;
      flow[l.source + '->' + child].parent.forEach(function (r) { if (r !== null && r !== undefined && r <= t) n++; });
      return n;
    });
  };
  var labels0 = plot.data[0].node.label.slice();
  var apply = function (t) {
    var values = volumes(t), labels = labels0.slice(), text = [];
    meta.links.forEach(function (l, i) {
      var name = l.kind === 'emerged' ? l.source : l.kind === 'disappeared' ? l.target : null;
      if (name !== null) labels[meta.names.indexOf(name)] = name + ': ' + values[i].toLocaleString();
      text.push(l.kind === 'traced' ? l.source + ' \u2192 ' + l.target + ' traced ' + values[i]
        : l.kind === 'emerged' ? l.target + ' emerged ' + values[i] : l.target + ' ' + values[i]);
    });
    Plotly.restyle(plot, { 'link.value': [values], 'node.label': [labels] });
    out.textContent = t.toFixed(2) + (Math.abs(t - meta.threshold) < 1e-9 ? " (the flow's)" : '');
    document.getElementById('sankey-counts').textContent = 'At r > ' + t.toFixed(2) + ': ' + text.join(' · ');
  };
  var asked = parseFloat((location.hash.match(/r=([0-9.]+)/) || [])[1]);
  var t0 = asked > 0 && asked < 1 ? asked : meta.threshold;
  slider.value = String(t0);
  slider.oninput = function () { apply(parseFloat(slider.value)); };
  apply(t0);
  ready();
};
document.head.appendChild(s);
