"""The `dev` extra holds what running the tests and executing the notebooks needs (issue 23)."""
from __future__ import annotations

import re

import tomllib

from .helpers import ROOT


def test_dev_extra_can_execute_the_notebooks() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    names = {re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower() for requirement in extras}
    # nbclient/ipykernel run them from tests and scripts/execute_notebooks.py; nbconvert is `jupyter nbconvert`
    assert {"nbclient", "nbformat", "ipykernel", "nbconvert"} <= names
