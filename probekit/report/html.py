"""``REPORT.html`` of a run folder: one self-contained page (styles, scripts, figures and data inline; no
request leaves it) with the verdict table, each claim's evidence and figures, sortable head tables and a
word-level attention explorer.

Everything the page shows is read from the run folder's files — ``manifest.json`` (title),
``verdicts.csv``, ``heads/*/heads.csv``, every ``*.png`` and the ``explore`` stage's ``explorer.json``
(`ExplorerSample`) — so ``probekit report DIR --html`` rebuilds it byte for byte. The explorer draws a
sentence's words with arcs to the words each attends to (in the style of bertviz, Vig 2019, with the gold
dependency arcs of Clark et al. 2019 overlaid). See ``docs/methods/report.md``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probekit.report.tables import atomic_write_text

#: the explore stage's file in its stage folder
EXPLORER_FILE = "explorer.json"
#: the file name of the page in the run folder
HTML_FILE = "REPORT.html"
#: the head-table columns the page embeds, in order
HEAD_COLUMNS = (
    "model",
    "data",
    "relation",
    "direction",
    "layer",
    "head",
    "accuracy",
    "offset_accuracy",
    "ci_low",
    "ci_high",
    "p_holm",
    "head_positional",
)
#: the dictionary-coded text columns of `head_tables`
TEXT_COLUMNS = ("model", "data", "relation", "direction")


def quantise(weights: np.ndarray) -> str:
    """Attention weights in [0, 1] as base64 of uint8 (``round(255 w)``): at most 1/510 off.

    Examples
    --------
    >>> quantise(np.array([0.0, 0.5, 1.0]))
    'AID/'
    """
    q = np.rint(np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    return base64.b64encode(np.ascontiguousarray(q).tobytes()).decode("ascii")


@dataclass(frozen=True)
class ExplorerSample:
    """Word-level attention of every head of one model on a few sentences of one dataset (the explore
    stage's result; `write` gives ``explorer.json``).

    Attributes
    ----------
    model, data : str
        Model name and data label.
    causal : bool
        A causal model: each word sees only itself and earlier words.
    n_layers, n_heads : int
    sentences : list of probekit.Sentence
        Their words and gold arcs (``heads`` 0-based, -1 = root; None = no gold arcs).
    attention : list of ndarray
        Per sentence ``[layer, head, from_word, to_word]`` (`probekit.activations.capture.Capture.attention`).
    sink : list of ndarray
        Per sentence ``[layer, head, from_word]``: the mass sent to special/sink tokens
        (`probekit.activations.capture.Capture.special_mass`).
    """

    model: str
    data: str
    causal: bool
    n_layers: int
    n_heads: int
    sentences: Sequence = ()
    attention: Sequence[np.ndarray] = field(default_factory=list)
    sink: Sequence[np.ndarray] = field(default_factory=list)

    def payload(self) -> dict:
        """The JSON-ready dict: weights uint8-quantised and base64-encoded (`quantise`)."""
        rows = []
        for s, att, sink in zip(self.sentences, self.attention, self.sink, strict=True):
            n = len(s.words)
            if att.shape != (self.n_layers, self.n_heads, n, n) or sink.shape != (
                self.n_layers,
                self.n_heads,
                n,
            ):
                raise ValueError(f"sentence {s.id!r}: attention {att.shape} / sink {sink.shape} do not match")
            rows.append(
                {
                    "id": s.id,
                    "words": list(s.words),
                    "heads": None if s.heads is None else [int(h) for h in s.heads],
                    "deprels": None if s.deprels is None else list(s.deprels),
                    "attention": quantise(att),
                    "sink": quantise(sink),
                }
            )
        return {
            "model": self.model,
            "data": self.data,
            "causal": self.causal,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "encoding": "uint8 base64, weight = byte / 255; "
            "attention [layer, head, from, to], sink [layer, head, from]",
            "sentences": rows,
        }

    def write(self, folder: str | os.PathLike) -> Path:
        """Write ``explorer.json`` (deterministic bytes) into ``folder``; return its path."""
        text = json.dumps(self.payload(), sort_keys=True, separators=(",", ":")) + "\n"
        return atomic_write_text(Path(folder) / EXPLORER_FILE, text)


def _clean(value):
    """A JSON-safe cell: NaN -> None, numpy scalars -> Python, floats to 4 decimals."""
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else round(float(value), 4)
    if value is None or (isinstance(value, str) and value == ""):
        return None
    return str(value)


def head_tables(run_dir: str | os.PathLike) -> dict:
    """Every ``heads/*/heads.csv`` of a run, row-wise with the text columns dictionary-coded:
    ``{"columns": HEAD_COLUMNS, "levels": {column: [values]}, "rows": [[...], ...]}`` (a text cell
    holds the index of its value in ``levels``)."""
    rows = []
    levels: dict[str, list[str]] = {c: [] for c in TEXT_COLUMNS}
    codes: dict[str, dict[str, int]] = {c: {} for c in TEXT_COLUMNS}
    for path in sorted(Path(run_dir).glob("heads/*/heads.csv")):
        table = pd.read_csv(path, keep_default_na=True)
        present = [c for c in HEAD_COLUMNS if c in table.columns]
        for record in table[present].itertuples(index=False):
            values = dict(zip(present, record, strict=True))
            row = []
            for c in HEAD_COLUMNS:
                v = _clean(values.get(c))
                if c in codes and v is not None:
                    if v not in codes[c]:
                        codes[c][v] = len(levels[c])
                        levels[c].append(v)
                    v = codes[c][v]
                row.append(v)
            rows.append(row)
    return {"columns": list(HEAD_COLUMNS), "levels": levels, "rows": rows}


def explorer_samples(run_dir: str | os.PathLike) -> list[dict]:
    """Every ``explore/*/explorer.json`` of a run, in folder order."""
    return [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(Path(run_dir).glob(f"explore/*/{EXPLORER_FILE}"))
    ]


def figure_alt(rel: str) -> str:
    """A text alternative for a run's figure from its path.

    Examples
    --------
    >>> figure_alt("heads/minilm-l6__ewt/heatmap_nsubj.png")
    'heatmap nsubj — heads stage, minilm-l6 on ewt (heads/minilm-l6__ewt/heatmap_nsubj.png)'
    """
    parts = rel.split("/")
    what = Path(parts[-1]).stem.replace("_", " ")
    stage = parts[0] if len(parts) > 1 else "run"
    where = parts[1].replace("__", " on ") if len(parts) > 2 else ""
    return f"{what} — {stage} stage{', ' + where if where else ''} ({rel})"


def _figure(run_dir: Path, path: Path) -> str:
    rel = path.relative_to(run_dir).as_posix()
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(figure_alt(rel))
    return (
        f'<figure><img loading="lazy" src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{html.escape(rel)}</figcaption></figure>"
    )


def _read_verdicts(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "verdicts.csv"
    columns = ["claim", "model", "verdict", "evidence", "tables"]
    if not path.exists():
        return pd.DataFrame(columns=columns)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)


def write_html_report(run_dir: str | os.PathLike, claims: Mapping[str, str] | None = None) -> Path:
    """Write ``REPORT.html`` of a run folder from its files; return its path.

    Parameters
    ----------
    run_dir
        The run folder (``manifest.json`` gives the title).
    claims
        Claim id -> claim text, in report order (`probekit.experiment.verdicts.CLAIMS`); claims of
        ``verdicts.csv`` not in it come after, without text.

    Returns
    -------
    pathlib.Path
        ``run_dir / "REPORT.html"``.

    Examples
    --------
    >>> import tempfile
    >>> page = write_html_report(tempfile.mkdtemp())
    >>> page.name, "Content-Security-Policy" in page.read_text()
    ('REPORT.html', True)
    """
    run_dir = Path(run_dir)
    claims = dict(claims or {})
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    name = str(manifest.get("name", run_dir.name))
    verdicts = _read_verdicts(run_dir)
    order = list(claims) + [c for c in dict.fromkeys(verdicts.claim) if c not in claims]
    order = [c for c in order if (verdicts.claim == c).any()]

    # each figure goes to the first claim whose evidence tables share its stage folder
    pngs = sorted(run_dir.rglob("*.png"))
    placed: dict[str, list[Path]] = {c: [] for c in order}
    other: list[Path] = []
    folders = {
        c: {
            Path(t.strip()).parent.as_posix()
            for tables in verdicts[verdicts.claim == c].tables
            for t in tables.split(",")
            if t.strip()
        }
        for c in order
    }
    for p in pngs:
        folder = p.parent.relative_to(run_dir).as_posix()
        home = next((c for c in order if folder in folders[c]), None)
        (placed[home] if home else other).append(p)

    esc = html.escape
    body = [f"<header><h1>{esc(name)}{': claim verdicts' if order else ''}</h1>"]
    nav = [("verdicts", "Verdicts")] if order else []
    nav += [(f"claim-{_slug(c)}", c) for c in order]
    nav += [("heads", "Head tables"), ("explorer", "Attention explorer")]
    if other:
        nav.append(("figures", "Other figures"))
    body.append(
        '<nav aria-label="sections">' + " · ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in nav) + "</nav>"
    )
    body.append(
        "<p>Numbers come from the run's CSV tables; <code>probekit report DIR --html</code> rebuilds this "
        "page from them. The page is self-contained: nothing is fetched from the network.</p></header><main>"
    )
    if order:
        body.append('<section id="verdicts"><h2>Verdicts</h2><table id="verdict-table"><thead><tr>')
        body.append(
            '<th scope="col">claim</th><th scope="col">model</th><th scope="col">verdict</th>'
            "</tr></thead><tbody>"
        )
        r: Any  # an itertuples row: its fields are str columns that pandas-stubs types as scalars
        for r in verdicts.itertuples():
            if r.claim not in order:
                continue
            anchor = f"claim-{_slug(r.claim)}"
            body.append(
                f'<tr data-claim="{esc(r.claim)}" data-model="{esc(r.model)}">'
                f'<td><a href="#{anchor}">{esc(r.claim)}'
                f'</a></td><td>{esc(r.model)}</td><td><a href="#{anchor}-{_slug(r.model)}" class="verdict '
                f'v-{_slug(r.verdict)}">{esc(r.verdict)}</a></td></tr>'
            )
        body.append("</tbody></table></section>")
    for c in order:
        anchor = f"claim-{_slug(c)}"
        body.append(f'<section id="{anchor}"><h2>{esc(c)}</h2>')
        if c in claims:
            body.append(f"<blockquote>{esc(claims[c])}</blockquote>")
        body.append("<ul>")
        for r in verdicts[verdicts.claim == c].itertuples():
            tables = ", ".join(f"<code>{esc(t.strip())}</code>" for t in r.tables.split(",") if t.strip())
            body.append(
                f'<li id="{anchor}-{_slug(r.model)}"><strong>{esc(r.model)}: {esc(r.verdict)}.</strong> '
                f"{esc(r.evidence)}. Tables: {tables}</li>"
            )
        body.append("</ul>")
        body += [_figure(run_dir, p) for p in placed[c]]
        body.append("</section>")
    body.append(HEADS_SECTION)
    body.append(EXPLORER_SECTION)
    if other:
        body.append('<section id="figures"><h2>Other figures</h2>')
        body += [_figure(run_dir, p) for p in other]
        body.append("</section>")
    body.append('</main><pre id="selftest-result" hidden></pre>')

    data = {"heads": head_tables(run_dir), "explorer": explorer_samples(run_dir)}
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    page = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # no request can leave the page: only inline scripts/styles and data: images are allowed
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(name)} — probekit report</title>",
        f"<style>{CSS}</style>",
        f"<script>{ERROR_TRAP}</script>",
        "</head><body>",
        *body,
        f'<script type="application/json" id="pk-data">{blob}</script>',
        f"<script>{SCRIPT}</script>",
        "</body></html>",
        "",
    ]
    return atomic_write_text(run_dir / HTML_FILE, "\n".join(page))


HEADS_SECTION = """<section id="heads"><h2>Head tables</h2>
<p>Every head × relation of the heads stage (<code>heads/*/heads.csv</code>): test-half accuracy with its
bootstrap CI, the best-offset baseline, the Holm-adjusted p against it, and the positional flag. Click a
column to sort; click a row to open that head in the explorer.</p>
<div class="controls" id="heads-controls">
<label>model <select id="ht-model"></select></label>
<label>data <select id="ht-data"></select></label>
<label>relation <select id="ht-relation"></select></label>
<label>direction <select id="ht-direction"></select></label>
<label>min accuracy <input id="ht-min" type="number" min="0" max="1" step="0.05" value="0"></label>
</div>
<p id="ht-count" aria-live="polite"></p>
<table id="heads-table"><thead></thead><tbody></tbody></table>
</section>"""

EXPLORER_SECTION = """<section id="explorer"><h2>Attention explorer</h2>
<p>Word-level attention (Clark et al. 2019: to a word sums over its tokens, from a word averages over them)
of one head on one sentence. <span class="key att">Blue arcs above</span>: attention from a word to the
words it attends to (thickness = weight; weights under 0.05 hidden). <span class="key gold">Orange arcs
below</span>: gold dependency arcs, dependent → head. <span class="key sink">Grey bars</span>: mass sent to
special/sink tokens. Hover or focus a word (Tab, then ←/→) to see its attention row; in the grid, arrow
keys move between heads.</p>
<div class="controls">
<label>model <select id="ex-model"></select></label>
<label>data <select id="ex-data"></select></label>
<label>sentence <select id="ex-sent"></select></label>
<label>layer <select id="ex-layer"></select></label>
<label>head <select id="ex-head"></select></label>
<label>best head for <select id="ex-best"></select></label>
</div>
<p id="ex-note"></p>
<div class="ex-wrap"><div class="ex-main"><div class="ex-scroll"><svg id="ex-svg" role="img"
aria-labelledby="ex-desc"></svg></div><p id="ex-desc" class="sr"></p>
<div id="ex-row" aria-live="polite"></div>
<h3>This head's scores</h3><table id="ex-scores"><thead><tr><th>data</th>
<th>relation</th><th>direction</th><th>accuracy [CI]</th><th>offset</th><th>positional</th></tr></thead>
<tbody></tbody></table></div>
<div class="ex-side"><h3>All heads on this sentence</h3><p>layers × heads; click, or arrow keys</p>
<div id="ex-grid" role="grid" aria-label="layers by heads; arrow keys move between heads"></div></div></div>
</section>"""

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1250px;padding:0 1em;color:#222}
nav a{white-space:nowrap}table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;font-size:13px}
th[aria-sort]{cursor:pointer}th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
#heads-table tbody tr{cursor:pointer}#heads-table tbody tr:hover{background:#eef}
.v-supported{color:#0072B2}.v-not-testable-in-this-model{color:#555}.v-not-supported{color:#D55E00}.v-partly-supported{color:#6b5b00}
figure{display:inline-block;margin:.5em;max-width:48%;vertical-align:top}figure img{max-width:100%}
figcaption{font-size:12px;color:#555}blockquote{margin:.5em 0;padding-left:1em;border-left:3px solid #ccc}
.controls label{margin-right:1em;white-space:nowrap}.ex-wrap{display:flex;gap:1.5em;align-items:flex-start}.ex-main{flex:1;min-width:0}
.ex-scroll,#ex-row{overflow-x:auto}.ex-side{flex:none}
#ex-svg text{font-size:14px}#ex-svg .word{cursor:pointer}#ex-svg .word:focus{outline:none}
#ex-svg .word:focus rect,#ex-svg .word.on rect{stroke:#000;stroke-width:2}
.key{padding:0 3px;border-radius:3px}.key.att{background:#cfe3f2}.key.gold{background:#f6dfb0}.key.sink{background:#ddd}
#ex-grid{display:grid;gap:2px;margin:.5em 0}#ex-grid button{padding:0;border:2px solid transparent;background:none;line-height:0}
#ex-grid button.cur{border-color:#D55E00}#ex-grid button:focus{outline:2px solid #000}
#ex-grid canvas{width:26px;height:26px;image-rendering:pixelated;background:#fff}
#ex-grid .lab{font-size:10px;line-height:26px;text-align:right;padding-right:3px}
.sr{position:absolute;left:-9999px}
"""  # noqa: E501

ERROR_TRAP = """window.PK_ERRORS=[];window.addEventListener('error',e=>PK_ERRORS.push(String(e.message)));
document.addEventListener('securitypolicyviolation',e=>PK_ERRORS.push('blocked request: '+e.blockedURI));
(function(){const ce=console.error;console.error=function(...a){PK_ERRORS.push(a.join(' '));ce.apply(console,a);};})();"""  # noqa: E501

SCRIPT = r"""
(function(){
'use strict';
const D=JSON.parse(document.getElementById('pk-data').textContent);
const $=id=>document.getElementById(id);
const H=D.heads, C={};H.columns.forEach((c,i)=>C[c]=i);
for(const c in H.levels){const k=C[c],lv=H.levels[c];for(const r of H.rows)if(r[k]!==null)r[k]=lv[r[k]];}
const fmt=v=>v===null||v===undefined?'':(typeof v==='number'?(Number.isInteger(v)?String(v):v.toFixed(3)):String(v));
function fill(sel,opts,keep){const old=sel.value;sel.innerHTML='';for(const [v,t] of opts){const o=document.createElement('option');o.value=v;o.textContent=t;sel.appendChild(o);}if(keep&&opts.some(o=>String(o[0])===old))sel.value=old;}
const uniq=a=>Array.from(new Set(a));

// ---------------- head tables ----------------
const HT={key:'accuracy',dir:-1};
const SHOW=['model','data','relation','direction','layer','head','accuracy','ci_low','ci_high','offset_accuracy','p_holm','head_positional'];
function htInit(){
  const all=[['','(all)']];
  fill($('ht-model'),all.concat(uniq(H.rows.map(r=>r[C.model])).map(v=>[v,v])));
  fill($('ht-data'),all.concat(uniq(H.rows.map(r=>r[C.data])).map(v=>[v,v])));
  fill($('ht-relation'),all.concat(uniq(H.rows.map(r=>r[C.relation])).map(v=>[v,v])));
  fill($('ht-direction'),all.concat(uniq(H.rows.map(r=>r[C.direction])).map(v=>[v,v])));
  const tr=document.createElement('tr');
  for(const c of SHOW){const th=document.createElement('th');th.scope='col';th.textContent=c;th.tabIndex=0;th.setAttribute('aria-sort','none');
    const go=()=>{HT.dir=HT.key===c?-HT.dir:-1;HT.key=c;htDraw();};th.addEventListener('click',go);
    th.addEventListener('keydown',e=>{if(e.key==='Enter'||e.key===' '){e.preventDefault();go();}});tr.appendChild(th);}
  document.querySelector('#heads-table thead').appendChild(tr);
  for(const id of ['ht-model','ht-data','ht-relation','ht-direction','ht-min'])$(id).addEventListener('input',htDraw);
  htDraw();
}
function htDraw(){
  const f={model:$('ht-model').value,data:$('ht-data').value,relation:$('ht-relation').value,direction:$('ht-direction').value};
  const min=parseFloat($('ht-min').value)||0;
  let rows=H.rows.filter(r=>Object.keys(f).every(k=>!f[k]||r[C[k]]===f[k])&&(min<=0||(r[C.accuracy]!==null&&r[C.accuracy]>=min)));
  const k=C[HT.key],d=HT.dir;
  rows.sort((a,b)=>{const x=a[k],y=b[k];if(x===y)return 0;if(x===null)return 1;if(y===null)return -1;return (x<y?-1:1)*d;});
  const n=rows.length;rows=rows.slice(0,200);
  $('ht-count').textContent=n+' rows'+(n>200?' (first 200 shown; filter to narrow)':'');
  document.querySelectorAll('#heads-table th').forEach(th=>th.setAttribute('aria-sort',th.textContent===HT.key?(d>0?'ascending':'descending'):'none'));
  const tb=document.querySelector('#heads-table tbody');tb.innerHTML='';
  for(const r of rows){const tr=document.createElement('tr');tr.tabIndex=0;
    for(const c of SHOW){const td=document.createElement('td');td.textContent=fmt(r[C[c]]);tr.appendChild(td);}
    const go=()=>{if(exOpen(r[C.model],r[C.data],r[C.layer],r[C.head]))$('explorer').scrollIntoView();};
    tr.addEventListener('click',go);tr.addEventListener('keydown',e=>{if(e.key==='Enter')go();});tb.appendChild(tr);}
}

// ---------------- explorer ----------------
const X=D.explorer, S={m:null,d:0,s:0,layer:0,head:0,word:null}, CACHE=new Map();
const models=uniq(X.map(x=>x.model));
const samples=()=>X.filter(x=>x.model===S.m);
const cur=()=>samples()[S.d];
function bytes(b64){const s=atob(b64),a=new Uint8Array(s.length);for(let i=0;i<s.length;i++)a[i]=s.charCodeAt(i);return a;}
function sent(){const x=cur();if(!x)return null;const key=x.model+'|'+x.data+'|'+S.s;
  if(!CACHE.has(key)){const s=x.sentences[S.s];CACHE.set(key,{s:s,att:bytes(s.attention),sink:bytes(s.sink),n:s.words.length});}
  return CACHE.get(key);}
const A=(z,l,h,i,j)=>z.att[((l*cur().n_heads+h)*z.n+i)*z.n+j]/255;
const K=(z,l,h,i)=>z.sink[(l*cur().n_heads+h)*z.n+i]/255;
function exInit(){
  if(!X.length){$('explorer').querySelector('.controls').hidden=true;$('ex-note').textContent='No attention was captured for this run: add the explore stage (analyses.explore) to the config.';return;}
  fill($('ex-model'),models.map(m=>[m,m]));S.m=models[0];
  $('ex-model').addEventListener('change',()=>{S.m=$('ex-model').value;S.d=0;S.s=0;S.layer=0;S.head=0;exControls();exDraw();});
  $('ex-data').addEventListener('change',()=>{S.d=+$('ex-data').value;S.s=0;exControls();exDraw();});
  $('ex-sent').addEventListener('change',()=>{S.s=+$('ex-sent').value;S.word=null;exDraw();});
  $('ex-layer').addEventListener('change',()=>{S.layer=+$('ex-layer').value;exDraw();});
  $('ex-head').addEventListener('change',()=>{S.head=+$('ex-head').value;exDraw();});
  $('ex-best').addEventListener('change',()=>{const v=$('ex-best').value;if(!v)return;const r=H.rows[+v];S.layer=r[C.layer];S.head=r[C.head];exControls();exDraw();});
  $('ex-grid').addEventListener('keydown',exGridKey);
  exControls();exDraw();
}
function exControls(){
  const x=cur();$('ex-model').value=S.m;
  fill($('ex-data'),samples().map((y,i)=>[i,y.data]));$('ex-data').value=S.d;
  fill($('ex-sent'),x.sentences.map((s,i)=>[i,s.words.join(' ')]));$('ex-sent').value=S.s;
  fill($('ex-layer'),Array.from({length:x.n_layers},(_,i)=>[i,i]));$('ex-layer').value=S.layer;
  fill($('ex-head'),Array.from({length:x.n_heads},(_,i)=>[i,i]));$('ex-head').value=S.head;
  // best head per relation/direction: this data's table if it has one, otherwise any table of the model
  const mine=H.rows.map((r,i)=>[r,i]).filter(([r])=>r[C.model]===S.m&&r[C.accuracy]!==null);
  const same=mine.filter(([r])=>r[C.data]===x.data), pool=same.length?same:mine, best={};
  for(const [r,i] of pool){const k=r[C.relation]+' '+r[C.direction];if(!(k in best)||r[C.accuracy]>H.rows[best[k]][C.accuracy])best[k]=i;}
  fill($('ex-best'),[['','(choose a relation)']].concat(Object.keys(best).sort().map(k=>{const r=H.rows[best[k]];return [best[k],k+' → L'+r[C.layer]+' H'+r[C.head]+' ('+fmt(r[C.accuracy])+(same.length?'':', '+r[C.data])+')'];})));
}
function exOpen(model,data,layer,head){
  if(!models.includes(model))return false;S.m=model;const i=samples().findIndex(y=>y.data===data);S.d=i<0?0:i;S.s=0;S.layer=layer;S.head=head;S.word=null;exControls();exDraw();return true;}
const NS='http://www.w3.org/2000/svg';
function el(tag,attrs,parent,text){const e=document.createElementNS(NS,tag);for(const k in attrs)e.setAttribute(k,attrs[k]);if(text!==undefined)e.textContent=text;if(parent)parent.appendChild(e);return e;}
function exDraw(){
  const x=cur(),z=sent(),svg=$('ex-svg');svg.innerHTML='';
  $('ex-layer').value=S.layer;$('ex-head').value=S.head;
  $('ex-note').textContent=(x.causal?'Causal model: each word sees only itself and earlier words, so only those weights exist; gold arcs to later words are dashed (not visible from the dependent). ':'')+'Showing '+x.model+', layer '+S.layer+', head '+S.head+', sentence '+z.s.id+'.';
  const xs=[],ws=[];let pos=10;
  for(const w of z.s.words){const wd=Math.max(36,w.length*9+14);xs.push(pos+wd/2);ws.push(wd);pos+=wd+8;}
  const n=z.n, rows=S.word===null?[...Array(n).keys()]:[S.word], span=(i,j)=>Math.min(200,20+Math.abs(xs[i]-xs[j])*0.35);
  let maxH=20;for(const i of rows)for(let j=0;j<n;j++)if(i!==j&&A(z,S.layer,S.head,i,j)>=0.05)maxH=Math.max(maxH,span(i,j));
  const base=maxH+15, H0=base+40;
  const width=pos+10, height=H0+120;svg.setAttribute('width',width);svg.setAttribute('height',height);svg.setAttribute('viewBox','0 0 '+width+' '+height);
  const gA=el('g',{'class':'att'},svg), gG=el('g',{'class':'gold'},svg), gW=el('g',{},svg);
  for(const i of rows)for(let j=0;j<n;j++){const w=A(z,S.layer,S.head,i,j);if(w<0.05)continue;
    if(i===j){el('circle',{'class':'att-arc',cx:xs[i],cy:base-8,r:(2+6*w).toFixed(1),fill:'none',stroke:'#0072B2','stroke-width':(0.5+6*w).toFixed(2),'stroke-opacity':0.75},gA);continue;}
    const h=span(i,j);
    el('path',{'class':'att-arc',d:'M'+xs[i].toFixed(1)+' '+base+' Q'+((xs[i]+xs[j])/2).toFixed(1)+' '+(base-2*h).toFixed(1)+' '+xs[j].toFixed(1)+' '+base,fill:'none',stroke:'#0072B2','stroke-width':(0.5+6*w).toFixed(2),'stroke-opacity':0.75},gA);
    el('circle',{cx:xs[j],cy:base,r:2.5,fill:'#0072B2'},gA);}
  const heads=z.s.heads||[], rels=z.s.deprels||[];
  heads.forEach((hd,i)=>{if(hd<0||hd>=n)return;const h=Math.min(70,14+Math.abs(xs[i]-xs[hd])*0.2), y=H0+28;
    el('path',{'class':'gold-arc',d:'M'+xs[i].toFixed(1)+' '+y+' Q'+((xs[i]+xs[hd])/2).toFixed(1)+' '+(y+2*h).toFixed(1)+' '+xs[hd].toFixed(1)+' '+y,fill:'none',stroke:'#E69F00','stroke-width':2,'stroke-dasharray':x.causal&&hd>i?'5 4':'none'},gG);
    el('text',{x:((xs[i]+xs[hd])/2).toFixed(1),y:(y+h+12).toFixed(1),'text-anchor':'middle','font-size':11,fill:'#8a5a00'},gG,rels[i]||'');});
  z.s.words.forEach((w,i)=>{const g=el('g',{'class':'word'+(S.word===i?' on':''),tabindex:0,role:'button','aria-label':'word '+(i+1)+' '+w+': show its attention row'},gW);
    el('rect',{x:xs[i]-ws[i]/2,y:base+2,width:ws[i],height:24,rx:4,fill:'#f4f4f4',stroke:'#bbb'},g);
    el('text',{x:xs[i],y:base+19,'text-anchor':'middle'},g,w);
    const k=K(z,S.layer,S.head,i);el('rect',{'class':'sink',x:xs[i]-ws[i]/2+4,y:base+28,width:Math.max(0,(ws[i]-8)*k).toFixed(1),height:6,fill:'#999'},g);
    el('title',{},g,w+': sink mass '+k.toFixed(2));
    g.addEventListener('mouseenter',()=>exWord(i));g.addEventListener('focus',()=>exWord(i,true));
    g.addEventListener('mouseleave',()=>{if(document.activeElement!==g)exWord(null);});
    g.addEventListener('keydown',e=>{const m={ArrowRight:1,ArrowLeft:-1}[e.key];if(m){e.preventDefault();const t=Math.min(n-1,Math.max(0,i+m));exWord(t,true);}else if(e.key==='Escape'){exWord(null);}});});
  $('ex-desc').textContent='Attention of '+x.model+' layer '+S.layer+' head '+S.head+' on: '+z.s.words.join(' ')+'. Strongest target per word: '+z.s.words.map((w,i)=>{let b=0;for(let j=1;j<n;j++)if(A(z,S.layer,S.head,i,j)>A(z,S.layer,S.head,i,b))b=j;return w+'→'+z.s.words[b];}).join(', ')+'.';
  exRow();exScores();exGrid();
}
function exWord(i,focus){if(S.word===i)return;S.word=i;exDraw();if(focus&&i!==null){const g=document.querySelectorAll('#ex-svg .word')[i];if(g)g.focus();}}
function exRow(){const x=cur(),z=sent(),box=$('ex-row');box.innerHTML='';
  if(S.word===null){box.textContent='Hover or focus a word to see its attention row.';return;}
  const i=S.word, t=document.createElement('table'), r1=document.createElement('tr'), r2=document.createElement('tr');
  const cap=document.createElement('caption');cap.textContent='Attention from “'+z.s.words[i]+'”'+(x.causal?' (causal: later words are not visible)':'');t.appendChild(cap);
  z.s.words.forEach((w,j)=>{if(x.causal&&j>i)return;const a=document.createElement('th');a.textContent=w;r1.appendChild(a);const b=document.createElement('td');b.textContent=A(z,S.layer,S.head,i,j).toFixed(3);r2.appendChild(b);});
  const a=document.createElement('th');a.textContent='[sink]';r1.appendChild(a);const b=document.createElement('td');b.textContent=K(z,S.layer,S.head,i).toFixed(3);r2.appendChild(b);
  t.appendChild(r1);t.appendChild(r2);box.appendChild(t);}
function exScores(){const tb=document.querySelector('#ex-scores tbody');tb.innerHTML='';
  const d=cur().data, rows=H.rows.filter(r=>r[C.model]===S.m&&r[C.layer]===S.layer&&r[C.head]===S.head);
  rows.sort((a,b)=>(b[C.data]===d)-(a[C.data]===d));
  if(!rows.length){const tr=document.createElement('tr'),td=document.createElement('td');td.colSpan=6;td.textContent='no heads table for this model (add the heads stage)';tr.appendChild(td);tb.appendChild(tr);return;}
  for(const r of rows){const tr=document.createElement('tr');
    for(const v of [r[C.data],r[C.relation],r[C.direction],fmt(r[C.accuracy])+(r[C.ci_low]!==null?' ['+fmt(r[C.ci_low])+', '+fmt(r[C.ci_high])+']':''),fmt(r[C.offset_accuracy]),r[C.head_positional]?'yes':'']){const td=document.createElement('td');td.textContent=v===null?'':v;tr.appendChild(td);}
    tb.appendChild(tr);}}
function exGrid(){const x=cur(),z=sent(),g=$('ex-grid');g.innerHTML='';g.style.gridTemplateColumns='32px repeat('+x.n_heads+',30px)';
  const n=z.n;
  for(let l=0;l<x.n_layers;l++){const lab=document.createElement('div');lab.className='lab';lab.textContent='L'+l;g.appendChild(lab);
    for(let h=0;h<x.n_heads;h++){const b=document.createElement('button');b.type='button';b.dataset.layer=l;b.dataset.head=h;
      b.setAttribute('aria-label','layer '+l+' head '+h);b.tabIndex=(l===S.layer&&h===S.head)?0:-1;if(l===S.layer&&h===S.head)b.className='cur';
      const c=document.createElement('canvas');c.width=n;c.height=n;const ctx=c.getContext('2d'),img=ctx.createImageData(n,n);
      for(let i=0;i<n;i++)for(let j=0;j<n;j++){const v=255-Math.round(255*A(z,l,h,i,j)),p=4*(i*n+j);
        img.data[p]=v;img.data[p+1]=Math.round(114+(v/255)*141);img.data[p+2]=Math.round(178+(v/255)*77);img.data[p+3]=(x.causal&&j>i)?40:255;}
      ctx.putImageData(img,0,0);b.appendChild(c);b.addEventListener('click',()=>{S.layer=l;S.head=h;exDraw();const q=g.querySelector('button.cur');if(q)q.focus();});g.appendChild(b);}}}
function exGridKey(e){const x=cur(),m={ArrowRight:[0,1],ArrowLeft:[0,-1],ArrowDown:[1,0],ArrowUp:[-1,0]}[e.key];if(!m)return;e.preventDefault();
  S.layer=Math.min(x.n_layers-1,Math.max(0,S.layer+m[0]));S.head=Math.min(x.n_heads-1,Math.max(0,S.head+m[1]));exDraw();const q=$('ex-grid').querySelector('button.cur');if(q)q.focus();}

htInit();exInit();

// #only=SECTION[&model=M&data=I&sent=I&layer=L&head=H&word=W]: one section alone, in a given state
// (the screenshots in docs/img are taken this way)
const Q=new URLSearchParams(location.hash.slice(1));
if(Q.has('only')){document.querySelector('header').hidden=true;
  document.querySelectorAll('main > section').forEach(s=>{if(s.id!==Q.get('only'))s.hidden=true;});
  if(X.length){if(Q.has('model')&&models.includes(Q.get('model')))S.m=Q.get('model');
    S.d=Math.min(+(Q.get('data')||0),samples().length-1);S.s=Math.min(+(Q.get('sent')||0),cur().sentences.length-1);
    S.layer=Math.min(+(Q.get('layer')||0),cur().n_layers-1);S.head=Math.min(+(Q.get('head')||0),cur().n_heads-1);
    exControls();exDraw();if(Q.has('word'))exWord(Math.min(+Q.get('word'),sent().n-1));}}

// #selftest: what tests/integration/test_html_report.py reads back with chromium --dump-dom
if(location.hash==='#selftest'){
  const r={verdict_rows:document.querySelectorAll('#verdict-table tbody tr').length,explorer_models:models.length};
  const sig=()=>Array.from(document.querySelectorAll('#ex-svg .att-arc')).map(p=>(p.getAttribute('d')||p.getAttribute('r'))+'@'+p.getAttribute('stroke-width')).join('|');
  r.arcs_before=document.querySelectorAll('#ex-svg .att-arc').length;const before=sig();
  r.gold_arcs=document.querySelectorAll('#ex-svg .gold-arc').length;
  if(X.length){const x=cur(),sel=x.n_heads>1?$('ex-head'):$('ex-layer');sel.value=String(((+sel.value)+1)%(x.n_heads>1?x.n_heads:x.n_layers));sel.dispatchEvent(new Event('change'));}
  r.arcs_after=document.querySelectorAll('#ex-svg .att-arc').length;r.arcs_changed=before!==sig();r.selected=[S.layer,S.head];
  r.grid_cells=document.querySelectorAll('#ex-grid button').length;r.head_rows=document.querySelectorAll('#heads-table tbody tr').length;
  r.resources=performance.getEntriesByType('resource').map(e=>e.name).filter(u=>!u.startsWith('data:'));
  r.errors=PK_ERRORS.slice();r.ready_ms=Math.round(performance.now());
  const out=$('selftest-result');out.textContent=JSON.stringify(r);out.hidden=false;
}
})();
"""  # noqa: E501
