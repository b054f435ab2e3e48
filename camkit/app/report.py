"""``OUT/report.html``: the manifest as one static page a person browses, offline.

One table row per input image and one column per method: the overlay (linked
to the full-size file), the predicted class and its probability, or the error
text for an input that failed. Inline CSS and a small inline script filter the
rows by predicted class, by folder label and by "prediction differs from the
label", and sort them by score; the state lives in the URL's fragment
(``report.html#class=3&differs=1&sort=score-asc``) so a view can be bookmarked.
Nothing is fetched from anywhere: no server, no CDN.

The page is built from the manifest's rows, not from one run's results, so a
resumed run or a second run with other methods gives a report of every row
the manifest holds. A detector's image shows, per method, its overlay with
every box and below it each detection: its label, score and (with
``--per-detection``) its own thumbnail; the class filter matches an image by
any of its detections' labels. Overlays are referenced by URL-escaped paths relative to
the page; every piece of text (file names are user data) is HTML-escaped.
"""

from __future__ import annotations

import csv
import html
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..errors import CamkitError
from ..explainers import METHODS, gives_pixel_attributions
from .io import write_atomically
from .manifest import MANIFEST_NAME, SKIPPED, Row, is_detection, read_rows

REPORT_NAME = "report.html"
# What `camkit evaluate -o OUT` leaves for the report's evaluation section.
EVALUATION_TABLE = "evaluation.csv"
EVALUATION_PLOT = "evaluation.png"
# The mark camkit recognises its own report by: a report.html without it is the user's and never overwritten.
GENERATOR = '<meta name="generator" content="camkit report">'


def check_owned(path: Path) -> None:
    """Refuse to overwrite a ``report.html`` that camkit did not write."""
    if not path.exists():
        return
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError as error:
        raise CamkitError(f"cannot read {path}: {error.strerror or error}") from None
    if GENERATOR.encode() not in head:
        raise CamkitError(
            f"{path} exists and was not written by camkit; camkit never overwrites it: choose another "
            "output folder with -o, or move that file."
        )


def label_of(input_path: str) -> str:
    """An input's label under ``--label-from-folder``: the name of the folder the file is in."""
    return Path(os.path.abspath(input_path)).parent.name


def write_report(
    manifest_path: Path, *, label_from_folder: bool = False, class_names: Sequence[str] | None = None
) -> Path:
    """Write ``report.html`` beside ``manifest_path`` from every row it holds, atomically; return its path."""
    path = manifest_path.parent / REPORT_NAME
    page = build_report(
        read_rows(manifest_path), path.parent, label_from_folder=label_from_folder, class_names=class_names
    )
    write_atomically(path, page.encode("utf-8"))
    return path


def write_evaluation_report(folder: Path, *, class_names: Sequence[str] | None = None) -> Path:
    """Write or extend ``folder/report.html`` with the evaluation section (``evaluation.csv`` and its plot).

    With overlay's manifest in the folder the page is the full report of its
    rows plus the section (keeping the label filters if the page had them);
    otherwise it is the section alone. Overlay's ``--report`` adds the
    section in turn, so the two commands may run in either order.
    """
    path = folder / REPORT_NAME
    manifest = folder / MANIFEST_NAME
    if manifest.exists():
        had_labels = path.exists() and b'<select id="label">' in path.read_bytes()
        return write_report(manifest, label_from_folder=had_labels, class_names=class_names)
    write_atomically(path, build_report([], folder).encode("utf-8"))
    return path


def evaluation_section(folder: Path) -> str:
    """The HTML of ``camkit evaluate``'s table (and plot) in ``folder``, or nothing when it has not run there."""
    table = folder / EVALUATION_TABLE
    if not table.exists():
        return ""
    try:
        rows = list(csv.reader(io.StringIO(table.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        return f"<section><h2>Evaluation</h2><p>cannot read {_text(table.name)}: {_text(error)}</p></section>"
    if not rows:
        return ""
    header = "".join(f"<th>{_text(cell)}</th>" for cell in rows[0])
    body = "\n".join("<tr>" + "".join(f"<td>{_text(cell)}</td>" for cell in row) + "</tr>" for row in rows[1:])
    plot = ""
    if (folder / EVALUATION_PLOT).exists():
        plot = f'<p><img src="{_attr(relative_url(folder / EVALUATION_PLOT, folder))}" alt="evaluation plot"></p>'
    return (
        '<section id="evaluation"><h2>Evaluation</h2>'
        f"<p>camkit evaluate: every method by every metric ({_text(table.name)}).</p>"
        f'<table class="evaluation"><thead><tr>{header}</tr></thead><tbody>\n{body}\n</tbody></table>'
        f"{plot}</section>"
    )


@dataclass
class _Image:
    """One input's rows, by method, and what the filters need to know about it."""

    input: str
    label: str | None
    cells: dict[str, Row] = field(default_factory=dict)
    detections: dict[str, list[Row]] = field(default_factory=dict)  # a detector's rows, by method

    def rows(self) -> list[Row]:
        return list(self.cells.values()) + [row for rows in self.detections.values() for row in rows]


def build_report(
    rows: Sequence[Row], folder: Path, *, label_from_folder: bool = False, class_names: Sequence[str] | None = None
) -> str:
    """The report page for manifest ``rows``, with overlay links relative to ``folder`` (where the page goes)."""
    images: dict[str, _Image] = {}
    for row in rows:
        name = str(row["input"])
        image = images.setdefault(name, _Image(name, label_of(name) if label_from_folder else None))
        if is_detection(row):
            image.detections.setdefault(str(row["method"]), []).append(row)
        else:
            image.cells[str(row["method"])] = row
    methods = _method_order({method for image in images.values() for method in [*image.cells, *image.detections]})
    classes: dict[str, str] = {}  # predicted class index -> what the filter shows
    for image in images.values():
        for row in image.rows():
            if _has_prediction(row):
                classes.setdefault(str(row["predicted_class"]), _class_text(row))
    labels = sorted({image.label for image in images.values() if image.label}, key=_natural)
    failed = sum(any(row["status"] == "error" for row in image.rows()) for image in images.values())
    detections = sum(bool(str(row.get("detection") or "")) for image in images.values() for row in image.rows())

    body = [
        _row_html(number, image, methods, folder, class_names)
        for number, image in enumerate(sorted(images.values(), key=lambda image: _natural(image.input)))
    ]
    class_options = "".join(
        f'<option value="{_attr(key)}">{_text(text)}</option>'
        for key, text in sorted(classes.items(), key=lambda item: _natural(item[0]))
    )
    if failed:
        class_options += '<option value="error">failed</option>'
    label_controls = ""
    if label_from_folder:
        label_options = "".join(f'<option value="{_attr(label)}">{_text(label)}</option>' for label in labels)
        label_controls = (
            f'<label>label <select id="label"><option value="">all</option>{label_options}</select></label>'
            '<label><input type="checkbox" id="differs"> prediction differs from label</label>'
        )
    headers = "".join(_header_html(method) for method in methods)
    label_header = "<th>label</th>" if label_from_folder else ""
    summary = (
        f"{len(images)} images, {len(methods)} method{'s' if len(methods) != 1 else ''}"
        f"{f', {detections} detections' if detections else ''}"
        f"{f', {failed} failed' if failed else ''}"
    )
    if not images:
        summary = "no overlays here yet (camkit overlay -o with this folder and --report adds them)"
    return _PAGE.format(
        generator=GENERATOR,
        evaluation=evaluation_section(folder),
        title=_text(f"camkit report: {folder.name}"),
        style=_STYLE,
        head_script=_HEAD_SCRIPT,
        heading=_text(f"camkit report: {folder.name}"),
        summary=_text(summary),
        class_options=class_options,
        label_controls=label_controls,
        label_header=label_header,
        headers=headers,
        rows="\n".join(body),
        script=_SCRIPT,
    )


def _row_html(number: int, image: _Image, methods: list[str], folder: Path, class_names: Sequence[str] | None) -> str:
    predicted = [row for row in image.rows() if _has_prediction(row)]
    tokens = sorted({f"c{row['predicted_class']}" for row in predicted})
    if any(row["status"] == "error" for row in image.rows()):
        tokens.append("error")
    scores = [float(row["score"]) for row in predicted if str(row["score"]).strip()]
    differs = ""
    if image.label is not None and predicted:
        matching = [_matches(image.label, row, class_names) for row in predicted]
        # A classifier's prediction differs when any method's does; a detector's when no detection has the label.
        differs = "1" if (not any(matching) if image.detections else not all(matching)) else "0"
    attributes = {
        "class": "item",
        "data-order": str(number),
        "data-classes": " ".join(tokens),
        "data-score": f"{max(scores):.6f}" if scores else "",
        "data-label": image.label or "",
        "data-differs": differs,
    }
    opening = "<tr " + " ".join(f'{key}="{_attr(value)}"' for key, value in attributes.items()) + ">"
    cells = [f'<th scope="row" class="input">{_text(image.input)}</th>']
    if image.label is not None:
        cells.append(f'<td class="label">{_text(image.label) or "&mdash;"}</td>')
    cells.extend(
        _detections_html(image.detections[method], folder)
        if method in image.detections
        else _cell_html(image.cells.get(method), folder)
        for method in methods
    )
    return opening + "".join(cells) + "</tr>"


def _picture(output: str, alt: str, folder: Path) -> str:
    url = _attr(relative_url(folder / Path(output), folder))  # outputs are relative to the manifest's folder
    return (
        f'<a href="{url}"><img src="{url}" alt="{_attr(alt)}" loading="lazy" decoding="async" '
        'onload="camkitImage(this, true)" onerror="camkitImage(this, false)"></a>'
    )


def _detections_html(rows: list[Row], folder: Path) -> str:
    """A detector's cell: the overlay with every box, then each detection's label and score (and its own map)."""
    ordered = sorted(rows, key=lambda row: int(row["detection"]) if str(row["detection"]).isdigit() else -1)
    first = ordered[0]
    overlay = str(first.get("overlay") or first["output"])
    items = []
    for row in ordered:
        if not str(row["detection"]).strip():
            continue  # the row of an image without detections
        score = f" &middot; {float(row['score']):.3f}" if str(row["score"]).strip() else ""
        thumbnail = ""
        if str(row["output"]).strip() and row["output"] != overlay:
            thumbnail = _picture(str(row["output"]), f"{row['method']} map of detection {row['detection']}", folder)
        items.append(
            f'<li data-detection="{_attr(row["detection"])}">{thumbnail}'
            f'<span class="class">{_text(_class_text(row))}</span>{score}</li>'
        )
    count = len(items)
    caption = f"{count} detection{'s' if count != 1 else ''}" if count else "no detections above the threshold"
    listing = f'<ol class="detections">{"".join(items)}</ol>' if items else ""
    picture = _picture(overlay, f"{first['method']} detections of {first['input']}", folder)
    return f'<td class="detector">{picture}<div class="caption">{caption}</div>{listing}</td>'


def _header_html(method: str) -> str:
    if gives_pixel_attributions(method):
        return (
            f'<th title="signed pixel attributions: grey is 0, brighter is positive">{_text(method)}'
            ' <br><span class="kind">attributions</span></th>'
        )
    return f"<th>{_text(method)}</th>"


def _cell_html(row: Row | None, folder: Path) -> str:
    if row is None:
        return '<td class="absent">not run</td>'
    if row["status"] == "error" or not str(row["output"]).strip():
        return f'<td class="error">{_text(row["error"] or row["status"])}</td>'
    # A pixel method's file is its signed attributions drawn as a picture (camkit overlay writes it so).
    drawn = "signed attributions" if gives_pixel_attributions(str(row["method"])) else "overlay"
    picture = _picture(str(row["output"]), f"{row['method']} {drawn} of {row['input']}", folder)
    if _has_prediction(row):
        score = f" &middot; {float(row['score']):.3f}" if str(row["score"]).strip() else ""
        caption = f'<span class="class">{_text(_class_text(row))}</span>{score}'
    else:
        caption = "prediction not recorded" if row["status"] == SKIPPED else ""
    return f'<td>{picture}<div class="caption">{caption}</div></td>'


def relative_url(path: Path, folder: Path) -> str:
    """``path`` as a URL relative to a page in ``folder``: every byte of the name that is not plain is %-escaped."""
    relative = Path(os.path.relpath(path, folder)).as_posix()
    # os.fsencode gives back the bytes a surrogate-escaped (non-UTF-8) name had; the browser asks for those.
    return quote(os.fsencode(relative), safe="/")


def _matches(label: str, row: Row, class_names: Sequence[str] | None) -> bool:
    """A folder label matches a prediction named like the class (case and '_' for ' ' aside) or like its index."""
    wanted = _folded(label)
    predicted = str(row["predicted_class"])
    names = [str(row["predicted_name"])]
    if class_names is not None and predicted.isdigit() and int(predicted) < len(class_names):
        names.append(class_names[int(predicted)])
    return wanted == predicted or any(name and wanted == _folded(name) for name in names)


def _folded(text: str) -> str:
    return text.replace("_", " ").strip().casefold()


def _has_prediction(row: Row) -> bool:
    return row["status"] != "error" and str(row["predicted_class"]).strip() != ""


def _class_text(row: Row) -> str:
    index, name = str(row["predicted_class"]), str(row["predicted_name"])
    return index if not name or name == index else f"{name} ({index})"


def _method_order(methods: set[str]) -> list[str]:
    """The registry's order, which the CLI and README use; methods it no longer has go last."""
    known = [method for method in METHODS if method in methods]
    return known + sorted(methods - set(known))


def _natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key where 'img2' comes before 'img10' and numbers before words."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part)


def _text(value: object) -> str:
    """Escaped for HTML; bytes of a non-UTF-8 name (kept as surrogates) show as U+FFFD."""
    clean = str(value).encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    return html.escape(clean, quote=True)


_attr = _text


_STYLE = """
:root { color-scheme: light dark; --line: #8884; --muted: #888; --bad: #c0392b; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1rem; }
h1 { font-size: 1.3rem; margin: 0 0 .25rem; }
form { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; align-items: center; margin: .75rem 0; }
#shown { color: var(--muted); }
table { border-collapse: collapse; }
thead th { position: sticky; top: 0; background: Canvas; z-index: 1; }
th, td { border-bottom: 1px solid var(--line); padding: .35rem .6rem; text-align: left; vertical-align: top; }
th.input { font-weight: normal; max-width: 22rem; overflow-wrap: anywhere; }
td img { display: block; max-width: 192px; max-height: 192px; image-rendering: auto; }
.caption { color: var(--muted); margin-top: .2rem; }
ol.detections { margin: .3rem 0 0; padding-left: 1.4rem; color: var(--muted); }
ol.detections li { margin-bottom: .3rem; }
ol.detections img { max-width: 96px; max-height: 96px; }
th .kind { font-weight: normal; color: var(--muted); font-size: .85em; }
.caption .class { color: CanvasText; font-weight: 600; }
tr[data-differs="1"] td.label { color: var(--bad); font-weight: 600; }
td.error, .missing { color: var(--bad); max-width: 22rem; overflow-wrap: anywhere; }
td.absent { color: var(--muted); }
""".strip()

# Defined before any <img>, so that no onload/onerror can fire before it exists.
_HEAD_SCRIPT = """
"use strict";
const camkitImages = {loaded: 0, failed: 0};
function camkitImage(img, ok) {
  img.dataset.state = ok ? "loaded" : "failed";
  camkitImages[ok ? "loaded" : "failed"] += 1;
  document.body.dataset.imagesLoaded = camkitImages.loaded;
  document.body.dataset.imagesFailed = camkitImages.failed;
  if (!ok) {
    img.hidden = true;
    const note = document.createElement("span");
    note.className = "missing";
    let where = img.getAttribute("src");
    try { where = decodeURIComponent(where); } catch (error) { /* bytes that are not UTF-8: show them escaped */ }
    note.textContent = "overlay missing: " + where;
    img.parentElement.after(note);
  }
}
""".strip()

_SCRIPT = """
"use strict";
(function () {
  const body = document.querySelector("tbody");
  const rows = Array.from(body.rows);
  const controls = {cls: document.getElementById("class"), label: document.getElementById("label"),
                    differs: document.getElementById("differs"), sort: document.getElementById("sort")};
  const shown = document.getElementById("shown");
  document.body.dataset.imagesTotal = document.querySelectorAll("td img").length;

  function readFragment() {
    const wanted = new URLSearchParams(location.hash.slice(1));
    const pick = (select, value) => {
      if (select && Array.from(select.options).some(option => option.value === value)) select.value = value;
    };
    pick(controls.cls, wanted.get("class") || "");
    pick(controls.label, wanted.get("label") || "");
    pick(controls.sort, wanted.get("sort") || "name");
    if (controls.differs) controls.differs.checked = wanted.get("differs") === "1";
  }

  function writeFragment() {
    const state = new URLSearchParams();
    if (controls.cls.value) state.set("class", controls.cls.value);
    if (controls.label && controls.label.value) state.set("label", controls.label.value);
    if (controls.differs && controls.differs.checked) state.set("differs", "1");
    if (controls.sort.value !== "name") state.set("sort", controls.sort.value);
    const fragment = state.toString() ? "#" + state.toString() : location.pathname + location.search;
    try { history.replaceState(null, "", fragment); } catch (error) { /* some browsers refuse on file:// */ }
  }

  function score(row) {
    return row.dataset.score === "" ? NaN : parseFloat(row.dataset.score);
  }

  function apply() {
    const cls = controls.cls.value;
    const token = cls === "error" ? "error" : "c" + cls;
    const label = controls.label ? controls.label.value : "";
    const differs = controls.differs ? controls.differs.checked : false;
    let count = 0;
    for (const row of rows) {
      const visible = (!cls || row.dataset.classes.split(" ").includes(token)) &&
        (!label || row.dataset.label === label) && (!differs || row.dataset.differs === "1");
      row.hidden = !visible;
      count += visible ? 1 : 0;
    }
    const order = controls.sort.value;
    const sign = order === "score-asc" ? 1 : -1;
    const sorted = rows.slice().sort((a, b) => {
      if (order !== "name") {
        const sa = score(a), sb = score(b);
        if (isNaN(sa) !== isNaN(sb)) return isNaN(sa) ? 1 : -1;  // rows without a score last, either way
        if (!isNaN(sa) && sa !== sb) return sign * (sa - sb);
      }
      return a.dataset.order - b.dataset.order;
    });
    for (const row of sorted) body.appendChild(row);
    shown.textContent = "showing " + count + " of " + rows.length;
    document.body.dataset.shown = count;
  }

  readFragment();
  apply();
  for (const control of Object.values(controls)) {
    if (control) control.addEventListener("change", () => { apply(); writeFragment(); });
  }
  window.addEventListener("hashchange", () => { readFragment(); apply(); });
})();
""".strip()

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{generator}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{style}
</style>
<script>
{head_script}
</script>
</head>
<body>
<h1>{heading}</h1>
{evaluation}
<p>{summary}. Click an overlay for its full size.</p>
<form onsubmit="return false">
<label>predicted class <select id="class"><option value="">all</option>{class_options}</select></label>
{label_controls}
<label>order <select id="sort"><option value="name">by name</option><option value="score-desc">score, highest first</option><option value="score-asc">score, lowest first</option></select></label>
<span id="shown"></span>
</form>
<table>
<thead><tr><th>input</th>{label_header}{headers}</tr></thead>
<tbody>
{rows}
</tbody>
</table>
<script>
{script}
</script>
</body>
</html>
"""
