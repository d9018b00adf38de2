"""The import page's HTML (segment.import_page): plain HTML, inline CSS and JS, nothing from the network.

The script reads `api/manifest` (relative URLs: the page works under a mount prefix), builds the table
with textContent only (descriptions are source text, never markup) and posts every series' controls to
`api/export`. Element hooks the tests use: #rows, tr.study / tr.series[data-case][data-key], select.cls,
input.exclude, input.include, td.kind, td.outcome, td.when, #export, #status, #error, #summary.
"""

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>segment import</title>
<style>body{font-family:sans-serif;margin:1.2em;color:#222}table{border-collapse:collapse}
td,th{padding:3px 8px;border-bottom:1px solid #ddd;vertical-align:top;text-align:left}
tr.study td{background:#eef;font-weight:bold}td.ev{font-size:.85em;color:#555;max-width:30em}
img{width:96px;background:#000}.chosen{color:#070}.out{color:#a50}#error{color:#b00}tr.decided{background:#ffd}</style>
</head><body><h1>segment import</h1><p id="summary"></p>
<p>Every study and series of the import, with the class the import gave it and why. Change a class,
exclude a series, or keep one flagged for burned-in text, then press Export: the studies you changed are
written again, and manifest.json records each decision. Thumbnails are shown here only, never written.</p>
<p><button id="export" type="button">Export</button> <span id="status"></span></p><p id="error"></p>
<table><thead><tr><th>study / series</th><th>middle slice</th><th>description</th><th>orientation</th>
<th>b-value</th><th>files</th><th>class</th><th>evidence</th><th>outcome</th><th>change class</th><th>exclude</th>
<th>include</th><th>decision</th></tr></thead><tbody id="rows"></tbody></table>
<script>
const KINDS = ['T2W', 'ADC', 'DWI', 'other'], $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function cell(tr, x, cls) {
  const td = x instanceof Node ? el('td', undefined, cls) : el('td', x === null ? '' : String(x), cls);
  if (x instanceof Node) td.appendChild(x);
  tr.appendChild(td);
}
function box(cls, on) { const b = el('input', undefined, cls); b.type = 'checkbox'; b.checked = !!on; return b; }
function seriesRow(c, s) {
  const tr = el('tr', undefined, 'series'), d = s.decision, auto = d ? d.automatic : s.kind;
  tr.dataset.case = c; tr.dataset.key = s.key;
  cell(tr, s.series_number);
  const img = el('img'); img.alt = 'series ' + s.series_number; img.loading = 'lazy';
  img.src = 'api/thumbnail?case=' + encodeURIComponent(c) + '&series=' + encodeURIComponent(s.key);
  cell(tr, img); cell(tr, s.description); cell(tr, s.orientation); cell(tr, s.b_value); cell(tr, s.n_files);
  cell(tr, s.kind + (d && d.kind ? ' (automatic: ' + auto + ')' : ''), 'kind');
  cell(tr, s.evidence.join('; '), 'ev');
  cell(tr, s.role ? 'chosen: ' + s.role : s.excluded, 'outcome ' + (s.role ? 'chosen' : 'out'));
  const sel = el('select', undefined, 'cls'), o = el('option', 'automatic (' + auto + ')');
  o.value = ''; sel.appendChild(o);
  for (const k of KINDS) { const x = el('option', k); x.value = k; sel.appendChild(x); }
  sel.value = d ? d.kind : ''; cell(tr, sel);
  cell(tr, box('exclude', d && d.exclude));
  const burned = s.excluded.startsWith('BurnedIn') || (d && d.include);
  cell(tr, burned ? box('include', d && d.include) : '');
  cell(tr, d ? d.by + ', ' + d.time : '', 'when');
  if (d) tr.classList.add('decided');
  return tr;
}
function render(m) {
  const rows = $('rows'), n = m.counts;
  rows.textContent = '';
  $('summary').textContent = m.studies.length + ' studies: ' + n.written + ' written, ' + n.skipped +
    ' skipped, ' + n.failed + ' failed; ' + m.problems.length + ' files that are not DICOM images';
  for (const st of m.studies) {
    const tr = el('tr', undefined, 'study'), td = el('td', st.case + ': ' + st.status + ' (' +
      (st.reason || st.outputs.join(', ')) + ')');
    tr.dataset.case = st.case; td.colSpan = 13; tr.appendChild(td); rows.appendChild(tr);
    for (const s of st.series) rows.appendChild(seriesRow(st.case, s));
  }
}
async function load() {
  const r = await fetch('api/manifest');
  if (r.ok) render(await r.json()); else $('error').textContent = (await r.json()).error;
}
$('export').addEventListener('click', async () => {
  const decisions = {};
  for (const tr of document.querySelectorAll('tr.series')) {
    const c = tr.dataset.case, inc = tr.querySelector('input.include');
    const d = {kind: tr.querySelector('select.cls').value, exclude: tr.querySelector('input.exclude').checked,
               include: inc ? inc.checked : false};
    decisions[c] = decisions[c] || {};
    if (d.kind || d.exclude || d.include) decisions[c][tr.dataset.key] = d;
  }
  $('status').textContent = 'exporting...'; $('error').textContent = ''; $('export').disabled = true;
  try {
    const r = await fetch('api/export', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                         body: JSON.stringify({decisions})});
    const j = await r.json();
    if (!r.ok) { $('status').textContent = ''; $('error').textContent = j.error; return; }
    render(j.manifest);
    $('status').textContent = 'exported: ' + j.rerun.length + ' studies written again' +
      (j.rerun.length ? ' (' + j.rerun.join(', ') + ')' : '');
  } finally { $('export').disabled = false; }
});
load();
</script></body></html>"""
