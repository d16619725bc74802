
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
document.body.setAttribute('data-ready', '1');
