"""report.html from manifest rows: one row per image, one column per method, escaped text, relative URLs."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from camkit import CamkitError
from camkit.app.manifest import MANIFEST_FIELDS, SKIPPED, write_rows
from camkit.app.report import REPORT_NAME, build_report, check_owned, label_of, write_report

from ..helpers import ReportPage


def _row(input_path: str, method: str, output: str = "", predicted: str = "", name: str = "", score: str = "",
         status: str = "ok", error: str = "") -> dict[str, str]:
    row = {"input": input_path, "output": output, "method": method, "predicted_class": predicted,
           "predicted_name": name, "score": score, "explained_class": "", "status": status, "error": error}
    assert tuple(row) == MANIFEST_FIELDS
    return row


def test_one_row_per_image_and_one_column_per_method(tmp_path) -> None:
    out = tmp_path / "out"
    rows = [
        _row("/in/a.png", "eigencam", str(out / "a_eigencam.png"), "2", "bird", "0.250000"),
        _row("/in/a.png", "gradcam", str(out / "a_gradcam.png"), "2", "bird", "0.250000"),
        _row("/in/b.png", "gradcam", str(out / "b_gradcam.png"), "0", "cat", "0.900000"),  # no eigencam row
        _row("/in/c.png", "gradcam", status="error", error="cannot read image: broken"),
        _row("/in/c.png", "eigencam", status="error", error="cannot read image: broken"),
        _row("/in/d.png", "gradcam", str(out / "d_gradcam.png"), status=SKIPPED),  # earlier run left no record
    ]
    page = ReportPage(build_report(rows, out))
    assert page.headers == ["input", "gradcam", "eigencam"]  # the registry's order, not the manifest's
    assert [row["input"] for row in page.rows] == ["/in/a.png", "/in/b.png", "/in/c.png", "/in/d.png"]
    assert all(len(row["cells"]) == 3 for row in page.rows)
    a, b, c, d = page.rows
    assert [image["src"] for cell in a["cells"] for image in cell["imgs"]] == ["a_gradcam.png", "a_eigencam.png"]
    assert "bird (2)" in a["cells"][1]["text"] and "0.250" in a["cells"][1]["text"]
    assert a["attrs"]["data-score"] == "0.250000" and a["attrs"]["data-classes"] == "c2"
    assert b["cells"][2]["text"] == "not run" and not b["cells"][2]["imgs"]
    assert [cell["text"] for cell in c["cells"][1:]] == ["cannot read image: broken"] * 2
    assert not any(cell["imgs"] for cell in c["cells"]) and c["attrs"]["data-classes"] == "error"
    assert c["attrs"]["data-score"] == ""  # no score: sorted last either way
    assert d["cells"][1]["imgs"] and "prediction not recorded" in d["cells"][1]["text"]
    # the class filter offers every predicted class, and failed inputs
    options = [attributes["value"] for tag, attributes in page.tags if tag == "option"]
    assert {"", "0", "2", "error"} <= set(options)


def test_file_names_are_escaped_text_and_escaped_relative_urls(tmp_path) -> None:
    out = tmp_path / "out"
    hostile = '<script>alert("x")</script> & \'quote\''
    names = ["sub dir/a #1 100%.png", "été/naïve ü.png", f"{hostile}.png", "odd \udcff byte.png"]  # last: not UTF-8
    rows = [_row(f"/in/{name}", "gradcam", str(out / name.replace(".png", "_gradcam.png")), "1", "dog", "0.5")
            for name in names]
    page_text = build_report(rows, out)
    page_text.encode("utf-8")  # a non-UTF-8 name does not stop the page
    assert "<script>alert" not in page_text and hostile not in page_text
    page = ReportPage(page_text)
    shown = [row["input"] for row in page.rows]
    assert f"/in/{hostile}.png" in shown and "/in/odd \ufffd byte.png" in shown
    for row in page.rows:
        source = row["cells"][1]["imgs"][0]["src"]
        assert not any(mark in source for mark in (" ", "#", "?", ":")) and not source.startswith("/")
        # what a browser resolves the URL to is the overlay's path, byte for byte
        original = next(r for r in rows if r["input"].replace("\udcff", "\ufffd") == row["input"])
        assert unquote_to_bytes(source) == os.fsencode(Path(original["output"]).relative_to(out).as_posix())


def test_nothing_outside_the_page_is_referenced(tmp_path) -> None:
    out = tmp_path / "out"
    page = ReportPage(build_report([_row("/in/a.png", "gradcam", str(out / "a_gradcam.png"), "1", "", "0.5")], out))
    for tag, attributes in page.tags:
        assert tag not in ("link", "iframe", "object", "embed")
        assert not (tag == "script" and "src" in attributes)
        for key in ("src", "href"):
            value = attributes.get(key, "")
            assert "//" not in value and ":" not in value, (tag, attributes)


def test_folder_labels_match_a_class_name_or_index(tmp_path) -> None:
    out = tmp_path / "out"
    cases = {  # input -> (predicted class, predicted name, differs)
        "/in/cat/1.png": ("0", "Cat", "0"),  # by name, case aside
        "/in/tabby_cat/2.png": ("3", "tabby cat", "0"),  # '_' for ' '
        "/in/281/3.png": ("281", "", "0"),  # by index
        "/in/dog/4.png": ("0", "Cat", "1"),
        "/in/dog/5.png": ("1", "", "0"),  # the model's class names say class 1 is 'dog'
    }
    rows = [_row(path, "gradcam", str(out / f"{i}.png"), predicted, name, "0.5")
            for i, (path, (predicted, name, _)) in enumerate(cases.items())]
    rows.append(_row("/in/dog/6.png", "gradcam", status="error", error="broken"))
    page = ReportPage(build_report(rows, out, label_from_folder=True, class_names=["cat", "dog"]))
    assert page.headers == ["input", "label", "gradcam"]
    differs = {row["input"]: row["attrs"]["data-differs"] for row in page.rows}
    assert differs == {**{path: case[2] for path, case in cases.items()}, "/in/dog/6.png": ""}  # no prediction
    assert {row["input"]: row["attrs"]["data-label"] for row in page.rows} == {
        path: path.split("/")[2] for path in [*cases, "/in/dog/6.png"]}
    assert label_of("/in/x y/#a.png") == "x y" and label_of("a.png") == Path.cwd().name
    # without labels there is neither a label column nor the filters that need one
    plain = build_report(rows, out)
    assert 'id="differs"' not in plain and ReportPage(plain).headers == ["input", "gradcam"]


def test_written_beside_the_manifest_atomically_and_never_over_a_foreign_page(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_rows(out / "manifest.csv", [_row("/in/a.png", "gradcam", str(out / "a_gradcam.png"), "1", "", "0.5")])
    path = write_report(out / "manifest.csv")
    assert path == out / REPORT_NAME and sorted(p.name for p in out.iterdir()) == ["manifest.csv", REPORT_NAME]
    assert len(ReportPage(path.read_text(encoding="utf-8")).rows) == 1
    check_owned(path)  # camkit's own page may be replaced
    path.write_text("<html>my notes</html>")
    with pytest.raises(CamkitError, match="not written by camkit"):
        check_owned(path)


def test_evaluation_section_escapes_the_table_and_links_the_plot(tmp_path) -> None:
    from camkit.app import report

    (tmp_path / report.EVALUATION_TABLE).write_text("method,pxap\n<b>x</b>,50.00\n")
    section = report.evaluation_section(tmp_path)
    assert "<td>&lt;b&gt;x&lt;/b&gt;</td>" in section and "<img" not in section
    (tmp_path / report.EVALUATION_PLOT).write_bytes(b"\x89PNG")
    assert '<img src="evaluation.png"' in report.evaluation_section(tmp_path)
    assert report.evaluation_section(tmp_path / "elsewhere") == ""
    page = report.build_report([], tmp_path)
    assert '<section id="evaluation">' in page and "no overlays here yet" in page


def test_a_pixel_methods_column_says_it_shows_signed_attributions(tmp_path) -> None:
    out = tmp_path / "out"
    rows = [_row("/in/a.png", "gradcam", str(out / "a_gradcam.png"), "2", "bird", "0.250000"),
            _row("/in/a.png", "guidedgradcam", str(out / "a_guidedgradcam.png"), "2", "bird", "0.250000")]
    html = build_report(rows, out)
    page = ReportPage(html)
    assert page.headers == ["input", "gradcam", "guidedgradcam attributions"]
    images = [image for cell in page.rows[0]["cells"] for image in cell["imgs"]]
    assert [image["src"] for image in images] == ["a_gradcam.png", "a_guidedgradcam.png"]
    assert images[0]["alt"] == "gradcam overlay of /in/a.png"
    assert images[1]["alt"] == "guidedgradcam signed attributions of /in/a.png"
