"""Targets from camkit's own code raise no torch warnings (issue 23)."""
from __future__ import annotations

import warnings

import torch

import camkit

from .helpers import tiny_detector


def test_detection_target_warns_nothing() -> None:
    model, detections, x = tiny_detector()
    target = camkit.DetectionTarget(torch.stack([d["boxes"][0] for d in detections]),
                                    torch.stack([d["labels"][0] for d in detections]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "requires_grad to a scalar" warning came from the IoU
        maps = camkit.GradCAM(model, "backbone.body.16")(x, target)
    assert torch.isfinite(maps).all() and maps.max() == 1
