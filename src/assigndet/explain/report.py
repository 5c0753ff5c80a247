"""The explorer's ``explain.json`` and its one self-contained ``index.html`` (inline CSS, figures
referenced as relative PNG files beside it: it opens from disk, no server, no network)."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from .assigners import METHOD_TITLES, METHODS

JSON_FILE = "explain.json"
HTML_FILE = "index.html"

_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #bbb;padding:3px 6px;text-align:right;vertical-align:top}th{background:#eee}
td.l{text-align:left}img{max-width:100%;border:1px solid #ddd}.note{color:#555;font-size:13px}"""


def write_json(report: dict[str, Any], out: Path) -> Path:
    path = out / JSON_FILE
    path.write_text(json.dumps(report, indent=1, allow_nan=False))
    return path


def _levels(rec: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in rec["per_level"].items() if v) or "-"


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _row(g: dict, name: str) -> str:
    a, p, d = g["atss"], g["paa"], g["dynamic_atss"]
    gmm = f"{_f(p['gmm_means'][0])} / {_f(p['gmm_means'][1])}" if p["gmm_fitted"] else "not fitted"
    cells = [
        str(g["index"]), f'<td class="l">{html.escape(name)}</td>', " ".join(f"{v:g}" for v in g["box"]),
        str(a["positives"]), _levels(a), _f(a["iou_mean"]), _f(a["iou_std"]), _f(a["threshold"]),
        str(p["positives"]), _levels(p), str(p["num_candidates"]), gmm, _f(p["cut_score"]),
        str(d["positives"]), _levels(d), _f(d["threshold"]),
        f'<a href="#gt{g["index"]}">figure</a>',
    ]
    return "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>"


def _section(g: dict, name: str, figure: str) -> str:
    i = g["index"]
    return f'<h3 id="gt{i}">GT {i}: {html.escape(name)}</h3><img src="{html.escape(figure)}" alt="GT {i}">'


_HEAD = ("<tr><th rowspan=2>GT</th><th rowspan=2>class</th><th rowspan=2>box (model px)</th>"
         "<th colspan=5>ATSS</th><th colspan=5>PAA</th><th colspan=3>Dynamic ATSS</th><th rowspan=2></th></tr>"
         "<tr><th>positives</th><th>per level</th><th>IoU mean</th><th>IoU std</th><th>threshold</th>"
         "<th>positives</th><th>per level</th><th>candidates</th><th>GMM means fg / bg</th><th>cut score</th>"
         "<th>positives</th><th>per level</th><th>threshold (P+Q)</th></tr>")


def write_html(report: dict[str, Any], figures: dict[str, str], out: Path) -> Path:
    """``index.html``: the settings, the overview figure, the table (one row per GT) and every GT's figure."""
    names = report["class_names"]
    gts = report["gts"]
    size, orig = report["input_size"], report["original_size"]
    title = f"assigndet explain: {report['preset']} on {Path(report['image']).name}"
    rows = "\n".join(_row(g, names[g["label"]]) for g in gts)
    sections = "\n".join(_section(g, names[g["label"]], figures["gt%d" % g["index"]]) for g in gts)
    s = report["settings"]
    weights = html.escape(report["weights"] or "none: an untrained (randomly initialised) head")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class="note">Weights: {weights}. The three assigners ({", ".join(METHOD_TITLES[m] for m in METHODS)}) are
applied to the same head outputs of this model. Everything is drawn on the model's input image: the
{orig[1]}x{orig[0]} image resized by the preset's transform to {size[1]}x{size[0]} pixels; anchors and boxes are in
those pixels. Settings: top-k {s["topk"]} per level (x{s["atss_topk_multiplier"]} anchors per location for
ATSS), pixel offset {s["offset"]:g}, PAA IoU threshold {s["paa_iou_threshold"]:g}, PAA variant {s["paa_variant"]}.
The numbers are in <a href="{JSON_FILE}">{JSON_FILE}</a>.</p>
<img src="{html.escape(figures["overview"])}" alt="overview">
<h2>Per ground truth</h2>
<table id="gts"><thead>{_HEAD}</thead><tbody>
{rows}
</tbody></table>
{sections}
</body></html>
"""
    path = out / HTML_FILE
    path.write_text(page)
    return path
