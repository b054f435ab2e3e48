"""Loading the model to explain: the bundled demo, a torchvision or timm name, an exported program, or user code."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import io
import json
import logging
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CamkitError, MissingDependency
from ..layers import TORCHSCRIPT_ADVICE
from ..viz import IMAGENET_MEAN, IMAGENET_STD
from .safe_load import UnsafeArchive, exported_program_bytes, weights_only_loads

logger = logging.getLogger("camkit")
RANDOM_WEIGHTS = "none"  # --weights none: the architecture's random initialisation


@dataclass
class LoadedModel:
    """A model in eval mode on its device, with how to feed it and name its classes."""

    model: nn.Module
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] | None
    description: str


def load_model(spec: str | None, weights: str | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Resolve ``--model``/``--weights`` to a :class:`LoadedModel`.

    * ``None`` or ``"demo"``: the bundled demo CNN (offline).
    * a ``.pt2`` file from ``torch.export.save``: loaded and unflattened so that
      its submodules (and so hooks and layer names) exist again.
    * ``package.module:factory``: ``factory()`` from the user's code must return an
      ``nn.Module``; ``weights`` may name a local state-dict file.
    * a torchvision model name: ``weights`` is a local state-dict/checkpoint file,
      or the name of one of torchvision's weight sets (``DEFAULT``,
      ``IMAGENET1K_V2``, ...), which torchvision downloads; with no ``weights`` the
      ``DEFAULT`` set is used.
    * a timm model name (``timm:NAME`` when torchvision has the same name):
      built with ``pretrained=False`` and ``weights`` loaded from a local file;
      camkit never downloads timm weights.

    ``weights="none"`` keeps any architecture's random initialisation (for trying the tool offline).
    """
    device = torch.device(device)
    random_init = weights is not None and weights.lower() == RANDOM_WEIGHTS
    if random_init:
        logger.warning(
            "--weights none: the model's weights are random, so its maps show the architecture, not anything learnt"
        )
    if spec is None or spec == "demo":
        return _demo(weights, device)
    path = Path(spec)
    if _is_ultralytics(path):
        return _ultralytics(spec, device)
    if path.suffix in (".pt2", ".pt", ".pth", ".ts", ".zip") or path.exists():
        if not path.exists():
            raise CamkitError(f"model file {spec} does not exist.")
        return _from_file(path, device)
    timm_name = _timm_name(spec)
    if timm_name is not None:
        return _timm(timm_name, weights, device)
    if ":" in spec:
        return _from_factory(spec, weights, device)
    return _torchvision(spec, weights, device)


def model_for_listing(spec: str, input_size: int | None = None) -> tuple[nn.Module, tuple[int, ...]]:
    """A model to list layers of, and its input size, without downloading anything.

    A torchvision or timm name gives the architecture with random weights
    (``pretrained=False``; a timm model that takes ``img_size`` is built for
    ``input_size``, so a ViT accepts it); anything else (``demo``, a ``.pt2``
    file, ``package.module:factory``) loads as for ``camkit overlay``.
    """
    import torchvision

    if spec in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(spec, weights=None).eval(), (224, 224)
    timm_name = _timm_name(spec)
    if timm_name is not None:
        model = None
        if input_size is not None:
            try:
                model = _timm_model(timm_name, img_size=input_size)
            except TypeError:  # a CNN takes any size and no img_size argument
                model = None
        model = model if model is not None else _timm_model(timm_name)
        return model.eval(), _timm_input_size(model)
    if spec in ("demo", None) or ":" in spec or Path(spec).suffix or Path(spec).exists():
        loaded = load_model(spec, None, "cpu")
        return loaded.model, tuple(loaded.input_size)
    # torchvision and timm share many names (resnet18): each suggested once.
    names = list(dict.fromkeys(torchvision.models.list_models(module=torchvision.models) + _timm_names()))
    close = difflib.get_close_matches(spec, names, n=4)
    raise CamkitError(
        f"unknown model {spec!r}"
        + (f"; did you mean {', '.join(close)}?" if close else "")
        + " (a torchvision or timm name, 'demo', a .pt2 file or package.module:factory)"
    )


def _demo(weights: str | None, device: torch.device) -> LoadedModel:
    from .demo import DEMO_CLASSES, DEMO_MEAN, DEMO_SIZE, DEMO_STD, DemoNet, load_demo_model

    if weights is None:
        model = load_demo_model(device)
    elif weights.lower() == RANDOM_WEIGHTS:
        model = DemoNet().to(device).eval()
    else:
        model = DemoNet()
        _load_weights(model, weights, "the demo CNN")
        model = model.to(device).eval()
    return LoadedModel(
        model, (DEMO_SIZE, DEMO_SIZE), DEMO_MEAN, DEMO_STD, list(DEMO_CLASSES), "camkit demo CNN (digits on photos)"
    )


def _from_file(path: Path, device: torch.device) -> LoadedModel:
    if _is_torchscript(path):
        raise CamkitError(
            f"{path} is a TorchScript archive. {TORCHSCRIPT_ADVICE} Pass the .pt2 file, or the "
            "model's code as package.module:factory."
        )
    data = exported_program_bytes(path)  # refuses archives that would unpickle code, before torch reads them
    try:
        with _quiet_torch_logs():
            program = torch.export.load(io.BytesIO(data))
    except Exception as error:
        raise CamkitError(
            f"cannot load {path} as a model: it is neither a torch.export program (.pt2) nor TorchScript "
            f"({type(error).__name__}). A state-dict file goes in --weights, with --model naming the architecture."
        ) from None
    model = torch.export.unflatten(program).to(device)
    return LoadedModel(model, (224, 224), IMAGENET_MEAN, IMAGENET_STD, None, f"exported program {path.name}")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.split("/", 1)[-1].startswith("code/") for name in names) and not any(
        "serialized_exported_program" in name or name.endswith("models/model.json") for name in names
    )


def _from_factory(spec: str, weights: str | None, device: torch.device) -> LoadedModel:
    module_name, _, attribute = spec.partition(":")
    try:
        with _current_folder_importable():
            module = importlib.import_module(module_name)
    except ImportError as error:
        raise CamkitError(f"cannot import {module_name!r} for --model {spec}: {error}.") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise CamkitError(f"{module_name} has no callable {attribute!r} for --model {spec}.")
    model = factory()
    if not isinstance(model, nn.Module):
        raise CamkitError(f"--model {spec} returned {type(model).__name__}, not a torch.nn.Module.")
    if weights is not None and weights.lower() != RANDOM_WEIGHTS:
        _load_weights(model, weights, f"--model {spec}")
    names = getattr(model, "class_names", None)
    size = getattr(model, "input_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    return LoadedModel(
        model.to(device).eval(),
        size,
        IMAGENET_MEAN,
        IMAGENET_STD,
        list(names) if names is not None else None,
        f"{spec}",
    )


def _is_ultralytics(path: Path) -> bool:
    """An ultralytics model: its architecture yaml (``yolo11n.yaml``) or a YOLO checkpoint (``yolov8n.pt``)."""
    return path.suffix in (".yaml", ".yml") or (path.suffix == ".pt" and path.name.lower().startswith("yolo"))


def _ultralytics(spec: str, device: torch.device) -> LoadedModel:
    """ultralytics builds a yaml with random weights, offline; a ``.pt`` is unpickled by its own loader (trust it)."""
    try:
        from ultralytics import YOLO
    except ImportError:
        raise MissingDependency(f"--model {spec} needs ultralytics: pip install 'camkit[yolo]'") from None
    if spec.endswith(".pt") and not Path(spec).exists():
        raise CamkitError(f"model file {spec} does not exist (camkit never downloads ultralytics checkpoints).")
    try:
        network = YOLO(spec).model
    except Exception as error:
        raise CamkitError(f"ultralytics cannot load --model {spec}: {str(error).strip()[:200]}") from None
    if not isinstance(network, nn.Module):  # ultralytics types .model as str | None (a name before loading)
        raise CamkitError(f"ultralytics gave no network for --model {spec}; give a YOLO yaml or .pt checkpoint.")
    names = getattr(network, "names", None)
    class_names = [str(names[index]) for index in sorted(names)] if isinstance(names, dict) else None
    # ultralytics models take RGB in [0, 1], unnormalised, at a multiple of their largest stride.
    return LoadedModel(
        network.to(device).eval(), (640, 640), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), class_names, f"ultralytics {spec}"
    )


def _torchvision_detector(name: str, weights: str | None, device: torch.device) -> LoadedModel:
    """A torchvision detector from a local state dict; never its (downloading) backbone weights."""
    import torchvision

    if weights is None or not Path(weights).exists():
        raise CamkitError(
            f"--model {name} is a torchvision detector: give --weights a local state-dict file "
            "(camkit does not download detector weights here)."
        )
    state = _state_dict(weights)
    classes = state.get("roi_heads.box_predictor.cls_score.weight")
    num_classes = int(classes.shape[0]) if isinstance(classes, torch.Tensor) else 91
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes)
    _load_weights(model, weights, name, state)
    coco = list(torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories", []))
    # torchvision detectors normalise and resize inside; they take RGB in [0, 1].
    return LoadedModel(
        model.to(device).eval(),
        (640, 640),
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        coco if len(coco) == num_classes else None,
        f"{name} ({weights})",
    )


def _torchvision(name: str, weights: str | None, device: torch.device) -> LoadedModel:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name in torchvision.models.list_models(module=torchvision.models.detection):
        return _torchvision_detector(name, weights, device)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=4) or sorted(available)[:6]
        raise CamkitError(
            f"unknown model {name!r}; did you mean {', '.join(close)}? (or a timm name, a .pt2 file, "
            "or package.module:factory)"
        )
    if weights is not None and Path(weights).exists():
        state = _state_dict(weights)
        model = torchvision.models.get_model(name, weights=None, num_classes=_num_classes(name, state))
        _load_weights(model, weights, name, state)
        return LoadedModel(
            model.to(device).eval(), (224, 224), IMAGENET_MEAN, IMAGENET_STD, None, f"{name} ({weights})"
        )
    if weights is not None and weights.lower() == RANDOM_WEIGHTS:
        model = torchvision.models.get_model(name, weights=None)
        return LoadedModel(
            model.to(device).eval(), (224, 224), IMAGENET_MEAN, IMAGENET_STD, None, f"{name} (random weights)"
        )
    enum = torchvision.models.get_model_weights(name)
    weight_name = weights or "DEFAULT"
    try:
        chosen = enum[weight_name] if weight_name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        options = ", ".join(["DEFAULT", *(member.name for member in enum)])
        raise CamkitError(
            f"--weights {weights!r} is neither a file nor one of {name}'s weight sets: {options}."
        ) from None
    try:
        with weights_only_loads():  # torchvision unpickles its cached file fully otherwise
            model = torchvision.models.get_model(name, weights=chosen)  # downloads once into torch's cache
    except pickle.UnpicklingError:
        raise UnsafeArchive(
            f"refusing torchvision's cached weights for {name} ({chosen}): the file in torch's hub "
            "cache holds more than tensors, which could run code. Delete it and download again."
        ) from None
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a corrupt download a RuntimeError
        raise CamkitError(
            f"cannot get {name}'s {chosen.name} weights ({_first_sentence(error)}); torchvision downloads them on "
            f"first use. Offline, pass --weights FILE (a local state dict) or --weights none (random weights, to "
            f"try the tool)."
        ) from None
    size = chosen.transforms().crop_size
    side = size[0] if isinstance(size, (list, tuple)) else int(size)
    meta: dict[str, Any] = chosen.meta
    return LoadedModel(
        model.to(device).eval(),
        (side, side),
        IMAGENET_MEAN,
        IMAGENET_STD,
        list(meta.get("categories", [])) or None,
        f"{name} ({chosen})",
    )


def _timm_name(spec: str) -> str | None:
    """The timm architecture ``spec`` names (``timm:NAME``, or a timm name torchvision lacks), else None."""
    if spec.startswith("timm:"):
        name = spec.removeprefix("timm:")
        if name.startswith(("hf-hub:", "hf_hub:")):
            raise CamkitError(
                f"--model {spec}: a Hugging Face Hub name downloads its configuration; camkit only "
                "builds timm's own architectures offline. Name the architecture and pass --weights."
            )
        if not _timm_module().is_model(name):
            close = difflib.get_close_matches(name, _timm_names(), n=4)
            raise CamkitError(f"timm has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "."))
        return name
    if ":" in spec or "/" in spec or "\\" in spec or Path(spec).suffix in (".pt2", ".pt", ".pth", ".ts", ".zip"):
        return None
    import torchvision

    if spec in torchvision.models.list_models(module=torchvision.models):
        return None  # torchvision's names keep meaning torchvision's models; timm:NAME asks for timm's
    try:
        import timm
    except ImportError:
        return None
    return spec if timm.is_model(spec) else None


def _timm_module() -> Any:
    try:
        import timm
    except ImportError:
        raise MissingDependency("timm models need timm: pip install timm") from None
    return timm


def _timm_names() -> list[str]:
    try:
        import timm
    except ImportError:
        return []
    return list(timm.list_models())


def _timm_model(name: str, **options: Any) -> nn.Module:
    # pretrained=False: the architecture only. timm would otherwise download from the Hugging Face Hub.
    model: nn.Module = _timm_module().create_model(name, pretrained=False, **options)
    return model


def _timm_input_size(model: nn.Module) -> tuple[int, int]:
    size = dict(getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)  # a ViT built for another size
    if isinstance(built, (tuple, list)) and len(built) == 2:
        return int(built[0]), int(built[1])
    return int(size[-2]), int(size[-1])


def _timm(name: str, weights: str | None, device: torch.device) -> LoadedModel:
    if weights is not None and weights.lower() == RANDOM_WEIGHTS:
        model = _timm_model(name)
        return LoadedModel(
            model.to(device).eval(),
            _timm_input_size(model),
            *_timm_mean_std(model),
            None,
            f"timm {name} (random weights)",
        )
    if weights is None:
        raise CamkitError(
            f"--model {name} is a timm architecture and camkit does not download timm weights: pass --weights "
            "a local checkpoint (for example torch.save(model.state_dict(), 'model.pt') after "
            "timm.create_model(..., pretrained=True) on a machine that may download)."
        )
    if not Path(weights).is_file():
        raise CamkitError(
            f"--weights {weights} is not a file; for timm's {name} camkit loads weights from a local "
            "checkpoint only (it never downloads them)."
        )
    state = _state_dict(weights)
    model = _timm_model(name)
    classes = _timm_num_classes(model, state)
    if classes is not None and classes != getattr(model, "num_classes", classes):
        model = _timm_model(name, num_classes=classes)
    _load_weights(model, weights, f"timm's {name}", state)
    return LoadedModel(
        model.to(device).eval(), _timm_input_size(model), *_timm_mean_std(model), None, f"timm {name} ({weights})"
    )


def _timm_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    config = dict(getattr(model, "pretrained_cfg", None) or {})
    mean = tuple(float(v) for v in config.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in config.get("std", IMAGENET_STD))
    return mean, std


def read_class_names(path: str | Path) -> list[str]:
    """``--class-names FILE``: one name per line, or JSON (a list, or a mapping from index to name)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CamkitError(f"cannot read --class-names {path}: {getattr(error, 'strerror', None) or error}") from None
    if Path(path).suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            raise CamkitError(
                f"--class-names {path} is not valid JSON ({error.msg} at line {error.lineno}); "
                "give a JSON list of names, a mapping of index to name, or one name per line"
            ) from None
        if isinstance(loaded, dict):
            try:
                loaded = [loaded[key] for key in sorted(loaded, key=int)]
            except (TypeError, ValueError):
                raise CamkitError(f"--class-names {path}: a JSON mapping needs class indices as keys") from None
        names = loaded if isinstance(loaded, list) else None
        if names is None or not all(isinstance(name, (str, int, float)) for name in names):
            raise CamkitError(f"--class-names {path}: give a JSON list of names or a mapping of index to name")
        names = [str(name) for name in names]
    else:
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
    if not names:
        raise CamkitError(f"--class-names {path} holds no names")
    return names


def _timm_num_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The class count of a checkpoint's classifier, by the name timm gives the classifier of this architecture."""
    classifier = dict(getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    for head in names:
        weight = state.get(f"{head}.weight")
        if isinstance(weight, torch.Tensor) and weight.dim() >= 1:
            return int(weight.shape[0])
    return None


def _state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a weights file, never unpickling arbitrary objects."""
    if not Path(path).is_file():
        raise CamkitError(f"weights file {path} does not exist.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # no object to refuse: bytes the weights-only reader cannot read
            raise CamkitError(
                f"cannot read weights file {path}: it is not a checkpoint torch can read with "
                "weights_only=True (a state dict saved by torch.save)."
            ) from None
        # torch's own message goes on to explain how to switch the check off; camkit never does.
        raise CamkitError(
            f"weights file {path} holds pickled Python objects (a whole model, or a checkpoint with custom "
            "classes), which camkit does not load because unpickling can run arbitrary code. Where you trust the "
            "file, save its weights alone: torch.save(torch.load(FILE, weights_only=False).state_dict(), "
            "'weights.pt'), and pass that file."
        ) from None
    except Exception as error:
        raise CamkitError(f"cannot read weights file {path}: {_first_sentence(error)}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise CamkitError(f"weights file {path} does not hold a state dict (a mapping of names to tensors).")
    # Checkpoints saved from DataParallel/DDP prefix every name with "module.".
    return {name.removeprefix("module."): tensor for name, tensor in loaded.items()}


def _first_sentence(error: BaseException) -> str:
    """The first sentence of an error's first line, whole (never cut in the middle)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    end = line.find(". ")
    return line[: end + 1] if end > 0 else line


def _num_classes(name: str, state: dict[str, torch.Tensor]) -> int:
    import torchvision

    reference = torchvision.models.get_model(name, weights=None).state_dict()
    for key, tensor in reversed(list(reference.items())):
        if key.endswith("weight") and tensor.dim() == 2 and key in state:
            return int(state[key].shape[0])
    return 1000


def resolve_device(name: str) -> torch.device:
    """``--device``: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CamkitError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise CamkitError(f"--device {name}: camkit runs models on cpu, cuda or mps, not {device.type}")
    if device.type in ("cpu", "mps") and device.index not in (None, 0):
        raise CamkitError(f"--device {name}: there is one {device.type} device; use --device {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CamkitError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CamkitError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CamkitError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device


def input_channels(model: nn.Module) -> int | None:
    """The channel count the model's first convolution expects, if it has one."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return module.in_channels
    return None


def _load_weights(model: nn.Module, path: str, what: str, state: dict[str, torch.Tensor] | None = None) -> None:
    """``load_state_dict`` with a one-line error when the weights belong to another architecture."""
    state = _state_dict(path) if state is None else state
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        expected = model.state_dict()
        mismatched = [
            name
            for name, tensor in state.items()
            if name in expected and tuple(expected[name].shape) != tuple(tensor.shape)
        ]
        missing = [name for name in expected if name not in state]
        unexpected = [name for name in state if name not in expected]
        details = []
        if mismatched:
            name = mismatched[0]
            details.append(
                f"{len(mismatched)} tensors of another shape (e.g. {name}: "
                f"{tuple(state[name].shape)} in the file, {tuple(expected[name].shape)} in the model)"
            )
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CamkitError(
            f"the weights in {path} do not fit {what}: {'; '.join(details) or str(error)[:160]}. "
            "Give the architecture these weights were trained for."
        ) from None


@contextlib.contextmanager
def _current_folder_importable() -> Iterator[None]:
    # The console script, unlike `python -m`, does not put the current folder on sys.path.
    folder = os.getcwd()
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    # torch logs its own tracebacks while probing a file that is not an exported program.
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    torch_logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_logger.setLevel(level)
