"""CLI start-up: the command line imports no optional heavy package before it needs one."""
from __future__ import annotations

import subprocess
import sys

from ..helpers import ROOT

HEAVY = ("transformers", "timm", "matplotlib", "sklearn", "pandas")


def test_importing_the_cli_leaves_the_heavy_packages_alone() -> None:
    probe = f"import sys, camkit.cli; print(sorted(name for name in {HEAVY!r} if name in sys.modules))"
    process = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "[]", process.stdout
