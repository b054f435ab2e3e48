"""3-D volumes and video, dense targets (segmentation, detection, multi-label), multi-layer fusion."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import GradCAM as PeerGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

import camkit

from .helpers import NEEDS_CLASS_LOGITS, NEEDS_LINEAR_HEAD, TWO_D_ONLY, applicable_methods, no_hooks_left, quick_options, reference_capture, tiny_detector, user_code_on_path


def _peer(model, layers, x, targets):
    peer = PeerGradCAM(model=model, target_layers=layers)
    try:
        return peer(input_tensor=x, targets=targets), peer
    finally:
        peer.activations_and_grads.release()


def test_r3d_maps_have_the_volume_size_and_match_the_peer() -> None:
    model = torchvision.models.video.r3d_18(num_classes=5).eval()
    x = torch.randn(2, 3, 16, 112, 112)
    result = camkit.GradCAM(model).explain(x, [1, 3])
    assert result.layer == "layer4" and result.maps.shape == (2, 16, 112, 112)
    a, g = reference_capture(model, model.layer4, x, [1, 3])
    low = ((g.mean((2, 3, 4))[:, :, None, None, None]) * a).sum(1).clamp_min(0)
    torch.testing.assert_close(result.layer_maps.double(), low, rtol=1e-5, atol=1e-9)
    full = F.interpolate(low[:, None], size=(16, 112, 112), mode="trilinear", align_corners=False)[:, 0]
    flat = full.flatten(1)
    full = (full - flat.min(1).values[:, None, None, None]) / (flat.max(1).values - flat.min(1).values)[:, None, None, None]
    np.testing.assert_allclose(result.maps.numpy(), full.numpy(), atol=1e-5)
    # pytorch-grad-cam resizes volumes with a corner-aligned cubic spline (scipy.ndimage.zoom)
    # instead of trilinear with half-pixel centres, so on a 2x7x7 map they agree only roughly.
    theirs, _ = _peer(model, [model.layer4], x, [ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    for b in range(2):
        assert np.corrcoef(theirs[b].ravel(), result.maps[b].numpy().ravel())[0, 1] > 0.85


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18"])
def test_every_method_on_video_models(name: str) -> None:
    model = torchvision.models.get_model(name, weights=None, num_classes=4).eval()
    x = torch.randn(1, 3, 8, 32, 32)  # layer4 is 1 x 2 x 2: every method still has a grid to weigh
    for method, cls in applicable_methods(model).items():
        if method in TWO_D_ONLY:
            continue
        maps = cls(model, **quick_options(cls))(x)
        assert maps.shape == (1, 8, 32, 32) and torch.isfinite(maps).all() and maps.max() <= 1, method
    assert no_hooks_left(model)


class TinyUNet3D(torch.nn.Module):
    """Encoder, bottleneck, decoder with a skip: a 3-D segmenter small enough for a test."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU())
        self.bottleneck = torch.nn.Sequential(torch.nn.MaxPool3d(2), torch.nn.Conv3d(8, 16, 3, padding=1), torch.nn.ReLU())
        self.up = torch.nn.ConvTranspose3d(16, 8, 2, stride=2)
        self.head = torch.nn.Conv3d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.encoder(x)
        return self.head(torch.cat([skip, self.up(self.bottleneck(skip))], dim=1))


def test_tiny_3d_unet_with_a_segmentation_target() -> None:
    torch.manual_seed(0)
    model = TinyUNet3D().eval()
    x = torch.randn(2, 1, 8, 16, 16)
    mask = torch.zeros(8, 16, 16)
    mask[2:6, 4:12, 4:12] = 1
    for method, cls in applicable_methods(model).items():
        options = quick_options(cls)
        if method in TWO_D_ONLY:
            continue
        if method in NEEDS_CLASS_LOGITS:  # a segmenter's callable target is no class of the logits
            with pytest.raises(camkit.CamkitError, match="not a callable|compares class logits"):
                cls(model, "bottleneck", **options)(x, camkit.SegmentationTarget(1, mask))
            continue
        maps = cls(model, "bottleneck", **options)(x, camkit.SegmentationTarget(1, mask))
        assert maps.shape == (2, 8, 16, 16) and torch.isfinite(maps).all(), method


def test_segmentation_target_equals_pytorch_grad_cam() -> None:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=False).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        predicted = model(x)["out"].argmax(1)[0]
    mask = (predicted == 2).float()

    class OutOnly(torch.nn.Module):  # pytorch-grad-cam needs a tensor output
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["out"]

    wrapped = OutOnly()
    theirs, _ = _peer(wrapped, [wrapped.model.backbone["16"]], x, [SemanticSegmentationTarget(2, mask.numpy())])
    ours = camkit.GradCAM(model, "backbone.16")(x, camkit.SegmentationTarget(2, mask))
    assert ours.max() == 1
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4)
    # without a mask: the pixels the model assigns to the class
    torch.testing.assert_close(camkit.GradCAM(model, "backbone.16")(x, camkit.SegmentationTarget(2)), ours)


def test_detection_target_gives_a_finite_map() -> None:
    model, detections, x = tiny_detector()
    boxes = torch.stack([d["boxes"][0] for d in detections])
    labels = torch.stack([d["labels"][0] for d in detections])
    target = camkit.DetectionTarget(boxes, labels)
    maps = camkit.GradCAM(model, "backbone.body.16")(x, target)
    assert maps.shape == (2, 128, 160) and torch.isfinite(maps).all() and maps.max() == 1
    assert no_hooks_left(model)


def test_multi_label_target() -> None:
    model = torchvision.models.resnet18(num_classes=6).eval()
    x = torch.randn(2, 3, 64, 64)
    target = camkit.MultiLabelTarget([1, 4])
    scores = camkit.GradCAM(model).explain(x, target).scores
    torch.testing.assert_close(scores, torch.sigmoid(model(x).detach()[[0, 1], [1, 4]]))


def test_multi_layer_fusion_equals_the_per_layer_maps_averaged() -> None:
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 96, 64)
    layers = ["layer3", "layer4"]

    def normalised(maps: torch.Tensor) -> torch.Tensor:
        flat = maps.flatten(1)
        low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
        return (maps - low) / (high - low)

    # each layer's map normalised at its own resolution, then upsampled
    per_layer = [
        F.interpolate(normalised(camkit.GradCAM(model, layer).explain(x, [0, 2]).layer_maps)[:, None], size=(96, 64),
                      mode="bilinear", align_corners=False)[:, 0]
        for layer in layers
    ]
    by_hand = torch.stack(per_layer).mean(0)
    flat = by_hand.flatten(1)
    by_hand = (by_hand - flat.min(1).values[:, None, None]) / (flat.max(1).values - flat.min(1).values)[:, None, None]
    fused = camkit.GradCAM(model, layers)
    torch.testing.assert_close(fused(x, [0, 2]), by_hand, atol=1e-6, rtol=0)
    assert fused.target_layer_name == "layer3+layer4"
    theirs, _ = _peer(model, [model.layer3, model.layer4], x, [ClassifierOutputTarget(0), ClassifierOutputTarget(2)])
    np.testing.assert_allclose(fused(x, [0, 2]).numpy(), theirs, atol=1e-4)
    maxed = camkit.GradCAM(model, layers, fuse="max")(x, [0, 2])
    stacked_max = torch.stack(per_layer).amax(0)
    flat = stacked_max.flatten(1)
    expected = (stacked_max - flat.min(1).values[:, None, None]) / (flat.max(1).values - flat.min(1).values)[:, None, None]
    torch.testing.assert_close(maxed, expected, atol=1e-6, rtol=0)
    for name, cls in applicable_methods(model).items():  # every explainer fuses, in one pass
        if name in NEEDS_LINEAR_HEAD:  # no classifier reads layer3's 256 channels
            with pytest.raises(camkit.CamkitError, match="256 channels"):
                cls(model, layers, **quick_options(cls))(x)
            assert torch.isfinite(cls(model, ["layer4", "layer4.1.conv2"])(x)).all()
            continue
        assert torch.isfinite(cls(model, layers, **quick_options(cls))(x)).all()


def test_overlay_cli_volumes_and_segmenters(tmp_path) -> None:
    import csv
    from pathlib import Path

    import nibabel
    from PIL import Image

    from camkit.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "scan.npy", rng.normal(size=(10, 20, 24)).astype(np.float32))
    nibabel.save(nibabel.Nifti1Image(rng.normal(size=(12, 14, 9)).astype(np.float32), np.eye(4)), folder / "brain.nii.gz")
    np.save(folder / "flat.npy", np.zeros((4, 4)))  # not a volume
    (folder / "broken.nii.gz").write_bytes(b"not gzip")
    with user_code_on_path():
        out = tmp_path / "out"
        status = main(["overlay", str(folder), "-o", str(out), "--model", "factory_model:tiny3d", "--method",
                       "gradcam,cfcam", "--save-maps", "npy", "--workers", "0", "--quiet", "--no-caption"])
        assert status == 1  # two bad files
        # montage: axial (H x W), coronal (D x W), sagittal (D x H), 2-pixel gutters
        assert Image.open(out / "scan_gradcam.png").size == (24 + 2 + 24 + 2 + 20 + 2, 20)
        assert np.load(out / "scan_cfcam_map.npy").shape == (10, 20, 24)
        assert Image.open(out / "brain_gradcam.png").size == (9 + 2 + 9 + 2 + 14 + 2, 14)
        rows = list(csv.DictReader(open(out / "manifest.csv")))
        assert {Path(r["input"]).name: r["status"] for r in rows} == {
            "scan.npy": "ok", "brain.nii.gz": "ok", "flat.npy": "error", "broken.nii.gz": "error"}

        images = tmp_path / "images"
        images.mkdir()
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / "street.png")
        for target in ("1", "top1"):
            seg_out = tmp_path / f"seg-{target}"
            assert main(["overlay", str(images), "-o", str(seg_out), "--model", "factory_model:tiny_segmenter",
                         "--target", target, "--workers", "0", "--quiet"]) == 0
            assert Image.open(seg_out / "street_gradcam.png").size[0] == 50  # then the caption strip
            row = next(csv.DictReader(open(seg_out / "manifest.csv")))
            assert row["status"] == "ok" and row["explained_class"] in ({"1"} if target == "1" else {"1", "2"})

