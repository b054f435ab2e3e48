"""State handling in one place: each submodule's own train/eval flag, grad and inference modes, the model lock."""
from __future__ import annotations

import ast
import threading

import pytest
import torch
import torchvision

import camkit
from camkit import metrics
from camkit.layers import auto_layer, dry_run
from camkit.modes import evaluation, model_lock

from .helpers import ROOT, applicable_methods, quick_options


def _fine_tuning_model() -> torch.nn.Module:
    """A resnet in train mode whose BatchNorm layers are frozen in eval mode, as when fine-tuning."""
    model = torchvision.models.resnet18(num_classes=5)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    return model


def _flags(model: torch.nn.Module) -> list[bool]:
    return [module.training for module in model.modules()]


def test_every_method_keeps_each_submodules_own_flag() -> None:
    model = _fine_tuning_model()
    before = _flags(model)
    assert any(before) and not all(before)
    x = torch.randn(2, 3, 64, 64)
    for cls in applicable_methods(model).values():
        cls(model, **quick_options(cls))(x)
        assert _flags(model) == before, cls.__name__


def test_layers_metrics_and_viz_keep_each_submodules_own_flag() -> None:
    model = _fine_tuning_model()
    before = _flags(model)
    x = torch.randn(2, 3, 64, 64)
    dry_run(model, x)
    auto_layer(model, x)
    assert _flags(model) == before
    maps = camkit.GradCAM(model)(x)
    metrics.deletion(model, x, maps, steps=4)
    metrics.average_drop(model, x, maps)
    assert _flags(model) == before
    camkit.compare(model, x, methods=["gradcam"])
    assert _flags(model) == before


def test_interactive_view_restores_the_flags() -> None:
    pytest.importorskip("ipywidgets")
    model = _fine_tuning_model()
    before = _flags(model)
    camkit.interactive.interact(model, torch.randn(2, 3, 32, 32), methods=["gradcam"])
    assert _flags(model) == before


def test_flags_grad_and_inference_modes_restored_after_an_error() -> None:
    model = _fine_tuning_model()
    before = _flags(model)
    with pytest.raises(RuntimeError, match="boom"):
        with evaluation(model):
            assert not any(_flags(model))
            torch.set_grad_enabled(False)
            raise RuntimeError("boom")
    assert _flags(model) == before and torch.is_grad_enabled()
    with torch.inference_mode():
        camkit.GradCAM(model)(torch.randn(1, 3, 32, 32))
        assert torch.is_inference_mode_enabled()
    assert _flags(model) == before


def test_the_claim_covers_every_shared_module_and_is_reentrant() -> None:
    backbone = torch.nn.Linear(2, 2)
    wrapper, other = torch.nn.Sequential(backbone, torch.nn.ReLU()), torch.nn.Linear(2, 2)
    with evaluation(wrapper), evaluation(wrapper), evaluation(backbone):  # a metric that runs an explainer nests
        results = []

        def try_claims() -> None:
            for model in (wrapper, backbone, other):
                claim = model_lock(model)
                got = claim.acquire(timeout=0.05)
                results.append(got)
                if got:
                    claim.release()

        thread = threading.Thread(target=try_claims)
        thread.start()
        thread.join()
        # another thread waits for the wrapper and for its backbone alone, not for an unrelated model
        assert results == [False, False, True]
    assert model_lock(backbone).acquire(timeout=0.05)  # every claim was released
    model_lock(backbone).release()


def test_nothing_but_modes_switches_train_or_eval() -> None:
    # The application's model loaders build their own models in eval mode; everything that
    # receives a user's model goes through camkit.modes.
    allowed = {"camkit/modes.py", "camkit/app/models.py", "camkit/app/demo.py"}
    offenders = []
    for path in sorted((ROOT / "camkit").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("eval", "train") and relative not in allowed):
                offenders.append(f"{relative}:{node.lineno}")
    assert offenders == []


def test_half_precision_models_and_autocast_give_float32_maps_close_to_float32() -> None:
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 48, 48)
    for cls in applicable_methods(model).values():
        if cls.name == "randomcam":
            continue  # new random weights on every call: two calls never agree
        options = quick_options(cls)
        reference = cls(model, "layer4", **options)(x, [1, 2])
        for dtype in (torch.float16, torch.bfloat16):
            half = torchvision.models.resnet18(num_classes=5).eval()
            half.load_state_dict(model.state_dict())
            maps = cls(half.to(dtype), "layer4", **options)(x.to(dtype), [1, 2])
            assert maps.dtype == torch.float32 and torch.isfinite(maps).all(), (cls.__name__, dtype)
            if issubclass(cls, camkit.PixelExplainer):
                # a per-pixel input gradient is not an average over a layer's grid: in half precision it is
                # finite and float32 but not within the CAM maps' tolerances (Saliency's max over channels least)
                continue
            # bf16 keeps ~3 significant digits: its maps agree on average, fp16 everywhere
            assert (maps - reference).abs().mean() < 1e-2, (cls.__name__, dtype)
            if dtype is torch.float16:
                assert (maps - reference).abs().max() < 2e-2, cls.__name__
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = cls(model, "layer4", **options)(x, [1, 2])
        assert maps.dtype == torch.float32 and torch.isfinite(maps).all(), cls.__name__
        assert issubclass(cls, camkit.PixelExplainer) or (maps - reference).abs().mean() < 1e-2, cls.__name__
