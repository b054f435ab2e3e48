"""`camkit overlay --report`: the page a person browses, from real runs of the bundled demo model, checked in a
real headless browser (Debian's chromium) that must load every overlay and run the filters and the sorting."""
from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from camkit.cli import main

from ..helpers import ROOT, ReportPage

FAST = ["--workers", "0", "--quiet"]
SAMPLES = ROOT / "assets" / "samples"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]  # containers often have a tiny /dev/shm


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Demo digits in folders named after their class, one in the wrong folder, one name with a space, a '#',
    a '%' and non-ASCII letters, and one corrupt file."""
    folder = tmp_path_factory.mktemp("labelled")
    (folder / "3").mkdir()
    (folder / "8").mkdir()
    shutil.copy(SAMPLES / "sample0_digit3.png", folder / "3" / "sample0_digit3.png")
    shutil.copy(SAMPLES / "sample3_digit7.png", folder / "3" / "sample3_digit7.png")  # a 7 filed under 3
    shutil.copy(SAMPLES / "sample1_digit8.png", folder / "8" / "été #1 100%.png")
    (folder / "8" / "broken.png").write_bytes(b"not a png")
    return folder


@pytest.fixture(scope="module")
def reported(labelled, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reported") / "out"
    status = main(["overlay", str(labelled), "-o", str(out), "--method", "gradcam,eigencam", "--report",
                   "--label-from-folder", *FAST])
    assert status == 1  # the corrupt file failed; the report is written all the same
    return out


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _page(out: Path) -> ReportPage:
    return ReportPage((out / "report.html").read_text(encoding="utf-8"))


def test_one_row_per_image_one_column_per_method_even_when_an_input_failed(reported) -> None:
    page, rows = _page(reported), _manifest(reported)
    assert page.headers == ["input", "label", "gradcam", "eigencam"]
    assert sorted(row["input"] for row in page.rows) == sorted({row["input"] for row in rows}) and len(page.rows) == 4
    broken = next(row for row in page.rows if row["input"].endswith("broken.png"))
    assert all("cannot read image" in cell["text"] for cell in broken["cells"][2:])
    for row in page.rows:
        for cell, method in zip(row["cells"][2:], ("gradcam", "eigencam")):
            for image in cell["imgs"]:  # relative to the page, %-escaped
                written = next(r["output"] for r in rows if r["input"] == row["input"] and r["method"] == method)
                assert reported / unquote(image["src"]) == reported / written and (reported / written).exists()
    assert any("%23" in image["src"] and "%25" in image["src"] for image in page.images)


def test_a_second_run_with_another_method_reports_every_manifest_row(labelled, tmp_path) -> None:
    out = tmp_path / "out"
    assert main(["overlay", str(labelled / "3"), "-o", str(out), "--report", *FAST]) == 0
    assert len(_page(out).rows) == 2 and _page(out).headers == ["input", "gradcam"]
    assert main(["overlay", str(labelled / "3"), "-o", str(out), "--method", "eigencam", *FAST]) == 0
    assert main(["overlay", str(labelled / "3"), "-o", str(out), "--method", "eigencam", "--report", *FAST]) == 0
    page = _page(out)  # the resumed run skipped everything and still reports both methods' rows
    assert page.headers == ["input", "gradcam", "eigencam"] and len(page.rows) == 2
    assert all(len(cell["imgs"]) == 1 and "·" in cell["text"] for row in page.rows for cell in row["cells"][1:])


def test_usage_errors_come_before_anything_is_written(labelled, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["overlay", str(labelled / "3"), "-o", str(out), "--label-from-folder", *FAST]) == 2
    assert "add --report" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    (out / "report.html").write_text("<p>my own page</p>")
    assert main(["overlay", str(labelled / "3"), "-o", str(out), "--report", *FAST]) == 2
    assert "not written by camkit" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["report.html"]


def test_ctrl_c_still_reports_the_finished_rows(labelled, tmp_path, monkeypatch, capsys) -> None:
    import camkit.app.runner

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt  # as if Ctrl-C came after the images, before the volumes

    monkeypatch.setattr(camkit.app.runner, "_explain_volumes", interrupted)
    out = tmp_path / "out"
    assert main(["overlay", str(labelled / "3"), "-o", str(out), "--report", *FAST]) == 130
    assert "report.html" in capsys.readouterr().err
    assert [len(row["cells"][1]["imgs"]) for row in _page(out).rows] == [1, 1]


# The real browser ------------------------------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        pytest.skip("no headless browser to render report.html: install Debian's chromium: apt-get install chromium")
    return found


def _rendered(out: Path, fragment: str, profile: Path) -> ReportPage:
    """The page's DOM after chromium loaded it (and its images) and ran its script, with ``fragment`` in the URL."""
    url = (out / "report.html").as_uri() + fragment
    process = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,4000",
                              "--virtual-time-budget=5000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 0 and "</html>" in process.stdout, process.stderr[-2000:]
    return ReportPage(process.stdout)


def test_a_headless_browser_loads_every_overlay_and_runs_the_filters(reported, tmp_path) -> None:
    rows = _manifest(reported)
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(ok) == 6

    everything = _rendered(reported, "#sort=score-asc", tmp_path / "profile")
    states = [image.get("data-state") for image in everything.images]
    assert states == ["loaded"] * 6, states  # the space, '#', '%' and 'é' names included
    assert everything.body["data-images-loaded"] == "6" and everything.body["data-images-failed"] == "0"
    assert len(everything.visible) == 4
    scores = [row["attrs"]["data-score"] for row in everything.rows]
    assert scores[-1] == "" and [float(s) for s in scores[:-1]] == sorted(float(s) for s in scores[:-1])

    differs = {row["input"] for row in ok if row["predicted_name"] != Path(row["input"]).parent.name}
    assert differs  # the 7 filed under 3 at least
    only_wrong = _rendered(reported, "#differs=1&sort=score-desc", tmp_path / "profile")
    assert {row["input"] for row in only_wrong.visible} == differs
    assert only_wrong.body["data-shown"] == str(len(differs))

    failed = _rendered(reported, "#class=error&label=8", tmp_path / "profile")
    assert [Path(row["input"]).name for row in failed.visible] == ["broken.png"]
