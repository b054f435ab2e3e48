"""`camkit layers`: torchvision, timm and package.module:factory models, listed offline with the automatic choice."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from camkit.cli import main

from ..helpers import user_code_on_path


pytestmark = pytest.mark.usefixtures("single_thread")


def _listing(capsys, *args: str) -> dict[str, str]:
    """Each listed layer's line, by layer name."""
    assert main(["layers", *args]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    return {line.split()[0]: line for line in lines}


def _chosen(lines: dict[str, str]) -> list[str]:
    return [name for name, line in lines.items() if line.endswith("<- automatic choice")]


def test_a_timm_levit_lists_its_shrinking_token_grids(offline, capsys) -> None:
    pytest.importorskip("timm")
    lines = _listing(capsys, "levit_128s", "--input-size", "128")  # LeViT is built for the size asked
    assert _chosen(lines) == ["stages"] and "tokens 2x2" in lines["stages"]
    # 128 pixels in 16-pixel patches, then every other row and column, twice.
    assert [lines[f"stages.{i}"].split()[4] for i in range(3)] == ["8x8", "4x4", "2x2"]


def test_a_timm_vit_lists_its_special_tokens(offline, capsys) -> None:
    pytest.importorskip("timm")
    lines = _listing(capsys, "deit_tiny_distilled_patch16_224", "--input-size", "64")
    assert _chosen(lines) == ["blocks.11.norm1"] and "tokens 2+4x4" in lines["blocks.11.norm1"]


def test_timm_prefix_asks_for_timm_where_torchvision_has_the_name(offline, capsys) -> None:
    pytest.importorskip("timm")
    timm_lines = _listing(capsys, "timm:resnet18", "--input-size", "64")
    torchvision_lines = _listing(capsys, "resnet18", "--input-size", "64")
    assert "global_pool.pool" in timm_lines and "avgpool" in torchvision_lines  # each library's own module names
    assert _chosen(timm_lines) == _chosen(torchvision_lines) == ["layer4"]


def test_a_factory_from_user_code(offline, capsys) -> None:
    with user_code_on_path():
        assert _chosen(_listing(capsys, "factory_model:tiny")) == ["3"]


def test_unknown_names_suggest_torchvision_and_timm_names(capsys) -> None:
    pytest.importorskip("timm")
    assert main(["layers", "levit_128x"]) == 2
    assert re.search(r"did you mean .*levit_128s", capsys.readouterr().err)
    assert main(["layers", "timm:hf-hub:timm/vit_tiny_patch16_224"]) == 2
    assert "Hugging Face Hub" in capsys.readouterr().err


def test_the_command_downloads_nothing(tmp_path) -> None:
    """The console entry point with empty caches: the listing works and the caches stay empty."""
    pytest.importorskip("timm")
    caches = {name: tmp_path / name for name in ("TORCH_HOME", "HF_HOME")}  # where torch hub and timm put weights
    for folder in caches.values():
        folder.mkdir()
    environment = {**os.environ, **{name: str(folder) for name, folder in caches.items()}, "HF_HUB_OFFLINE": "1"}
    process = subprocess.run([sys.executable, "-m", "camkit", "layers", "convnext_atto", "--input-size", "64"],
                             capture_output=True, text=True, env=environment, timeout=300)
    assert process.returncode == 0, process.stderr
    assert "stages" in process.stdout and "<- automatic choice" in process.stdout
    assert not [path for folder in caches.values() for path in folder.rglob("*")]
