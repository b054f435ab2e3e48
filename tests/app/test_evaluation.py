"""``camkit evaluate``'s progress bar: images x methods scored, on stderr, only on a terminal."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from camkit.app import runner
from camkit.cli import main


@pytest.mark.slow  # the metrics take a minute on a loaded 2-core machine
def test_evaluate_counts_images_of_every_method(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(runner, "stderr_is_terminal", lambda: True)
    for index in range(2):
        Image.fromarray(np.full((20, 20, 3), 40 * index, dtype=np.uint8)).save(tmp_path / f"{index}.png")
    command = ["evaluate", str(tmp_path), "--methods", "gradcam,eigencam", "--steps", "2", "--batch-size", "1"]
    assert main(command) == 0
    shown = capsys.readouterr().err
    assert "camkit evaluate" in shown and re.findall(r"(\d+\.\d)/4 img", shown)[-1] == "4.0", shown
    assert main([*command, "--quiet"]) == 0
    assert "camkit evaluate" not in capsys.readouterr().err
