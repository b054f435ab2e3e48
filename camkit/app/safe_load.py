"""Turning files into objects without running code from them: camkit's one loading policy.

Unpickling runs whatever the file asks for, so camkit unpickles nothing a file
brings unless it is the user's own code they named on purpose:

* weights and checkpoints: ``torch.load(weights_only=True)`` (tensors and
  containers only);
* ``.npy`` volumes: ``numpy.load(allow_pickle=False)``;
* ``torch.export`` archives (``.pt2``): read once into memory and inspected
  before torch sees them. torch's own loader unpickles, with full pickle,
  every weight or constant its config marks ``use_pickle``, every torchbind or
  opaque object, legacy ``.pt`` payloads and sample inputs that fail a
  weights-only load. :func:`exported_program_bytes` refuses any archive with
  such an entry unless the entry loads under ``weights_only=True``, and hands
  torch the very bytes it checked (no second read of the file);
* ``--model package.module:factory`` imports the user's module: that is code
  the user chose to run, exactly as ``python -c 'import package.module'``;
* timm and torchvision names build architectures from the libraries' code;
  their weights are local files, loaded as above. torchvision's named weight
  sets are downloaded and cached by torchvision, whose loader would unpickle a
  cached file fully; :func:`weights_only_loads` makes every ``torch.load`` in
  that call weights-only, so a tampered cache is refused too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import CamkitError

# Names inside a torch.export archive (torch.export.pt2_archive.constants; spelled here so that a torch
# that moves them does not silently switch the checks off).
_ARCHIVE_FORMAT = "archive_format"
_MODELS_PREFIX = "models/"
_WEIGHTS_DIR = "data/weights/"
_CONSTANTS_DIR = "data/constants/"
_SAMPLE_INPUTS_DIR = "data/sample_inputs/"
_PICKLED_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")  # torchbind's pickler and plain pickle.loads
# torch's 2.7 zip layout: its state dict, constants and example inputs fall back to full pickle.
_LEGACY_NAMES = ("serialized_state_dict.pt", "serialized_constants.pt", "serialized_example_inputs.pt")


class UnsafeArchive(CamkitError):
    """A model file that would run code while loading."""


def exported_program_bytes(path: Path) -> bytes:
    """The bytes of a ``torch.export`` archive, after checking that loading them unpickles nothing unsafe.

    Raises :class:`UnsafeArchive` naming the first entry that needs full unpickling.
    """
    data = path.read_bytes()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise CamkitError(
            f"cannot load {path} as a model: it is not a torch.export archive (.pt2 is a zip file). "
            "A state-dict file goes in --weights, with --model naming the architecture."
        ) from None
    with archive:
        entries = {_inner_name(name): name for name in archive.namelist()}
        if any(name in entries for name in _LEGACY_NAMES) or ("version" in entries and _ARCHIVE_FORMAT not in entries):
            raise UnsafeArchive(
                f"refusing {path}: it is a torch.export archive in the pre-2.8 layout, whose weights torch loads with "
                "full pickle (which can run code). Re-save it with torch.export.save from a current torch."
            )
        if _ARCHIVE_FORMAT not in entries:
            raise CamkitError(
                f"cannot load {path} as a model: it is neither a torch.export program (.pt2) nor "
                "TorchScript. A state-dict file goes in --weights, with --model naming the architecture."
            )
        for name in entries:
            if name.startswith(_MODELS_PREFIX) and name.endswith(".json"):
                model = name[len(_MODELS_PREFIX) : -len(".json")]
                _check_payloads(archive, entries, path, _WEIGHTS_DIR, model, "weights")
                _check_payloads(archive, entries, path, _CONSTANTS_DIR, model, "constants")
            elif name.startswith(_SAMPLE_INPUTS_DIR):
                _check_weights_only(archive.read(entries[name]), path, name)
    return data


def _check_payloads(
    archive: zipfile.ZipFile, entries: dict[str, str], path: Path, folder: str, model: str, kind: str
) -> None:
    legacy = f"{folder}{model}.pt"
    if legacy in entries:  # torch deserialises these with a fallback to full pickle
        _check_weights_only(archive.read(entries[legacy]), path, legacy)
    config_name = f"{folder}{model}_{kind}_config.json"
    if config_name not in entries:
        return  # torch itself refuses the archive, before unpickling anything
    try:
        config: dict[str, Any] = json.loads(archive.read(entries[config_name])).get("config", {})
    except (ValueError, AttributeError):
        raise CamkitError(f"cannot load {path} as a model: its {config_name} is not valid JSON.") from None
    for item, meta in config.items():
        file_name = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
        if file_name.startswith(_PICKLED_OBJECT_PREFIXES):
            raise UnsafeArchive(
                f"refusing {path}: its {kind} entry {item!r} is a pickled Python object, and loading it would run "
                "code from the file. camkit loads only archives of tensors; export the model without custom objects."
            )
        if isinstance(meta, dict) and meta.get("use_pickle"):
            entry = f"{folder}{file_name}"
            _check_weights_only(archive.read(entries[entry]) if entry in entries else b"", path, f"{entry} ({item})")


def _check_weights_only(payload: bytes, path: Path, entry: str) -> None:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on the way to refusing
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        reason = f"it calls {found.group(1)}" if found else "it holds more than tensors"
        raise UnsafeArchive(
            f"refusing {path}: its entry {entry} needs full unpickling, which can run code from the file "
            f"({reason}). Load only archives you made, re-saved with torch.export.save."
        ) from None


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` in the block is weights-only, whatever its caller asked (torch's own switch).

    For library code that loads files camkit does not open itself (torchvision's cached weight sets).
    The switch is an environment variable, so the block belongs in single-threaded set-up code.
    """
    saved = {
        name: os.environ.get(name) for name in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _inner_name(name: str) -> str:
    # torch.export.save puts everything under one top folder named after the file.
    return name.split("/", 1)[1] if "/" in name else name


__all__ = ["UnsafeArchive", "exported_program_bytes", "weights_only_loads"]
