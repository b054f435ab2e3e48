"""The registry: @camkit.register builds METHODS, create reads it, the CLI and README follow it."""
from __future__ import annotations

import csv
import re
import subprocess
import sys

import pytest
import torch

import camkit
from camkit.cli import main
from camkit.cli.methods import markdown_table

from ..helpers import ROOT, cam_methods, quick_defaults

FOUNDING = ("gradcam", "gradcam++", "smoothgradcam++", "eigencam", "cfcam")


@pytest.fixture
def registered():
    """A method registered by a test, removed again afterwards."""
    names: list[str] = []

    def register(name: str, cls: type) -> type:
        names.append(name)
        return camkit.register(name, paper="A test, 2026")(cls)

    yield register
    for name in names:
        camkit.METHODS.pop(name, None)


def test_the_founding_methods_are_registered_with_their_papers() -> None:
    assert tuple(camkit.METHODS)[: len(FOUNDING)] == FOUNDING
    for name, cls in camkit.METHODS.items():
        assert cls.name == name and issubclass(cls, camkit.Explainer)
        assert re.search(r"\d{4}", cls.paper), cls.paper
    assert camkit.METHODS["gradcam"] is camkit.GradCAM and "arXiv:1610.02391" in camkit.GradCAM.paper


def test_a_duplicate_name_raises(registered) -> None:
    with pytest.raises(camkit.CamkitError, match="'gradcam' is already registered to GradCAM"):
        camkit.register("gradcam", paper="Someone, 2026")(type("Other", (camkit.GradCAM,), {}))
    registered("testonly", type("TestOnly", (camkit.GradCAM,), {}))
    with pytest.raises(camkit.CamkitError, match="already registered"):
        camkit.register("testonly", paper="Someone, 2026")(type("Again", (camkit.GradCAM,), {}))
    assert camkit.METHODS["gradcam"] is camkit.GradCAM


def test_register_refuses_what_is_not_an_explainer() -> None:
    with pytest.raises(camkit.CamkitTypeError, match="subclass of camkit.Explainer"):
        camkit.register("notamethod", paper="Someone, 2026")(torch.nn.Linear)
    with pytest.raises(camkit.CamkitError, match="needs paper"):
        camkit.register("nopaper", paper="")
    with pytest.raises(camkit.CamkitError, match="lower-case"):
        camkit.register("Upper", paper="Someone, 2026")
    assert "notamethod" not in camkit.METHODS


class AbsGradCAM(camkit.ChannelWeightedExplainer):
    """Each channel weighted by its mean absolute gradient."""

    def channel_weights(self, captured):
        return captured.gradients.abs().mean(dim=(2, 3))


def test_a_method_added_in_a_test_file_works_from_python_and_the_cli(registered, tmp_path) -> None:
    registered("absgradcam", AbsGradCAM)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    maps = camkit.create("absgradcam", model, "1")(torch.randn(2, 3, 16, 16))
    assert maps.shape == (2, 16, 16) and maps.max() == 1
    out = tmp_path / "out"
    assert main(["overlay", str(ROOT / "assets" / "samples"), "-o", str(out), "--method", "gradcam,absgradcam",
                 "--workers", "0", "--quiet"]) == 0
    with open(out / "manifest.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert {row["method"] for row in rows} == {"gradcam", "absgradcam"} and {row["status"] for row in rows} == {"ok"}
    written = [row["output"] for row in rows if row["method"] == "absgradcam"]
    assert len(written) == len(list((ROOT / "assets" / "samples").glob("*.png")))
    assert all(path.endswith("_absgradcam.png") and (out / path).exists() for path in written)
    with quick_defaults():  # the perturbation methods' paper defaults take minutes on a CPU
        assert main(["overlay", str(ROOT / "assets" / "samples"), "-o", str(tmp_path / "all"), "--method", "all",
                     "--workers", "0", "--quiet"]) == 0
    with open(tmp_path / "all" / "manifest.csv", newline="") as file:
        # the demo model is a CNN: `all` leaves out the methods that read a transformer's attention
        assert {row["method"] for row in csv.DictReader(file)} == set(cam_methods())


def test_camkit_methods_lists_the_registry() -> None:
    process = subprocess.run([sys.executable, "-m", "camkit", "methods"], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    lines = process.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(camkit.METHODS)
    for line, cls in zip(lines, camkit.METHODS.values()):
        assert cls.__name__ in line and cls.paper in line


def test_the_readme_method_table_is_the_registrys() -> None:
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- methods:start -->\n(.*?)\n<!-- methods:end -->", readme, re.S)
    assert table is not None, "README.md lost its methods markers"
    assert table.group(1) == markdown_table(), "run `camkit methods --markdown` and paste it into README.md"


def test_camkit_methods_says_which_methods_give_pixel_attributions() -> None:
    from camkit.cli.methods import plain_table

    pixel = {"guidedbackprop", "guidedgradcam", "saliency", "inputxgradient", "integratedgradients", "fullgrad"}
    assert {name for name in camkit.METHODS if camkit.explainers.gives_pixel_attributions(name)} == pixel
    assert camkit.explainers.gives_pixel_attributions(camkit.GuidedBackprop)
    assert not camkit.explainers.gives_pixel_attributions("gradcam")
    assert not camkit.explainers.gives_pixel_attributions("no-such-method")
    for line in plain_table().splitlines():
        assert ("map + pixel attributions" in line) == (line.split()[0] in pixel)
    for row in markdown_table().splitlines()[2:]:
        name = row.split("`")[1]
        assert row.split(" | ")[4] == ("map + pixel attributions" if name in pixel else "map")
