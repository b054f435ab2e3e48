"""A user's own model code, for the ``--model package.module:factory`` test."""
from torch import nn


def tiny() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )
    model.input_size = 32
    return model


def tiny_crashing_on_rank_one() -> nn.Module:
    """``tiny()`` whose process dies abruptly on rank 1 after CRASH_AFTER forward passes (a killed rank)."""
    import os
    import time

    model = tiny()
    crash_after = int(os.environ.get("CRASH_AFTER", "0"))
    calls = {"count": 0}

    def count(_module, _inputs):
        calls["count"] += 1
        if crash_after and os.environ.get("RANK") == "1" and calls["count"] > crash_after:
            time.sleep(1.0)  # mid-run: earlier outputs are on disk by now
            os._exit(9)

    model.register_forward_pre_hook(count)
    return model


def tiny3d() -> nn.Module:
    """A 3-D classifier for volumes (B, 1, D, H, W)."""
    model = nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2), nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 3),
    )
    model.input_size = (8, 16, 16)
    return model


class _Segmenter(nn.Module):
    """A tiny 2-D segmenter with torchvision's output convention: {"out": (B, classes, H, W)}."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, 3, 1)
        self.input_size = 32

    def forward(self, x):
        return {"out": self.classifier(self.body(x))}


def tiny_segmenter() -> nn.Module:
    return _Segmenter()


class _Standardising(nn.Module):
    """Standardises each image by its own statistics first, as some pipelines do: a blank image becomes NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
        self.input_size = 32

    def forward(self, x):
        flat = x.flatten(1)
        x = (x - flat.mean(1)[:, None, None, None]) / flat.std(1)[:, None, None, None]
        return self.head(self.body(x))


def per_image_standardising() -> nn.Module:
    return _Standardising()


def grayscale() -> nn.Module:
    """A classifier for 1-channel images."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    model.input_size = 32
    return model


class _Picky(nn.Module):
    """``tiny()`` whose forward raises the exception type named by PICKY_ERROR on any batch holding a bright image."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny()

    def forward(self, x):
        import os

        if bool((x.flatten(1).mean(1) > 1.0).any()):
            raise {"assert": AssertionError, "value": ValueError, "index": IndexError}[os.environ.get("PICKY_ERROR", "assert")](
                "this model refuses bright images")
        return self.net(x)


def picky() -> nn.Module:
    model = _Picky()
    model.input_size = 32
    return model


def tiny_vit() -> nn.Module:
    """A tiny timm ViT (random init) for 32 x 32 inputs: the attention methods' command-line test."""
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              num_classes=3)
    model.input_size = 32
    return model


def tiny_yolo() -> nn.Module:
    """YOLOv8n from ultralytics' yaml with fixed random weights (every process builds the same), 64 x 64 inputs;
    the class branch's prior bias is zeroed so that random boxes score about 0.5 and pass a threshold."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False)
    for branch in model.model[-1].cv3:
        torch.nn.init.zeros_(branch[-1].bias)
    model.input_size = 64
    return model.eval()
