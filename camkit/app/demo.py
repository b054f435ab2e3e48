"""The bundled demo: handwritten digits pasted on photographs, and a small CNN that finds them.

Both image sources ship inside scikit-learn, a declared dependency, so the
demo runs offline: ``sklearn.datasets.load_digits`` (8x8 handwritten digits)
and ``load_sample_images`` (two photographs). Each demo image is a random crop
of a photograph with one digit pasted at a random place, size and colour, so
the object's true box is known and a good heatmap must land on it.

``scripts/train_demo.py`` trains :class:`DemoNet` and writes its weights and
held-out accuracy to ``camkit/weights/``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CamkitError

DEMO_SIZE = 64
DEMO_CLASSES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
DEMO_MEAN = (0.5, 0.5, 0.5)
DEMO_STD = (0.25, 0.25, 0.25)
WEIGHTS_FILE = "demo.pt"


class DemoNet(nn.Module):
    """Four conv stages, global average pooling, a linear head (~290k parameters).

    ``features`` ends on an 8x8 grid at the demo size: the layer camkit's
    automatic choice explains. It carries its ``class_names`` (the digits),
    so ``target="7"`` names a class.
    """

    class_names = DEMO_CLASSES
    input_size = DEMO_SIZE
    mean, std = DEMO_MEAN, DEMO_STD

    def __init__(self, num_classes: int = len(DEMO_CLASSES)) -> None:
        super().__init__()

        def stage(inputs: int, outputs: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [
                nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
                nn.BatchNorm2d(outputs),
                nn.ReLU(),
            ]
            return [*layers, nn.MaxPool2d(2)] if pool else layers

        self.features = nn.Sequential(
            *stage(3, 32, True), *stage(32, 64, True), *stage(64, 128, True), *stage(128, 128, False)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@lru_cache(maxsize=1)
def _sources() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits, load_sample_images

    digits = load_digits()
    glyphs = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = torch.tensor(digits.target, dtype=torch.long)
    photos = torch.stack([torch.tensor(image).permute(2, 0, 1) for image in load_sample_images().images])
    return glyphs, labels, photos  # photos: (2, 3, 427, 640) uint8


def make_demo_dataset(
    n: int, seed: int, split: str = "train", size: int = DEMO_SIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` demo images: uint8 ``(n, 3, size, size)``, labels ``(n,)``, boxes ``(n, 4)``.

    Boxes are ``(x0, y0, x1, y1)`` pixel coordinates, x1/y1 exclusive, of the
    digit's visible strokes. The train and test splits use disjoint digit
    samples (every fifth one is held out), so test accuracy measures
    generalisation to unseen handwriting. Deterministic from ``seed``.
    """
    if split not in ("train", "test"):
        raise CamkitError(f"split must be 'train' or 'test', got {split!r}.")
    glyphs, labels, photos = _sources()
    held_out = torch.arange(len(glyphs)) % 5 == 0
    pool = torch.nonzero(held_out if split == "test" else ~held_out).squeeze(1)
    generator = torch.Generator().manual_seed(seed * 2 + (split == "test"))
    chosen = pool[torch.randint(len(pool), (n,), generator=generator)]

    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    boxes = torch.empty(n, 4, dtype=torch.long)
    _, _, photo_h, photo_w = photos.shape
    for i in range(n):
        photo = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        crop = int(torch.randint(160, photo_h + 1, (1,), generator=generator))
        top = int(torch.randint(photo_h - crop + 1, (1,), generator=generator))
        left = int(torch.randint(photo_w - crop + 1, (1,), generator=generator))
        background = photo[:, top : top + crop, left : left + crop].float()[None] / 255
        background = F.interpolate(background, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[
            0
        ]

        side = round(size * float(torch.empty(1).uniform_(0.28, 0.45, generator=generator)))
        glyph = F.interpolate(glyphs[chosen[i]][None, None], size=(side, side), mode="bilinear", align_corners=False)[
            0, 0
        ]
        alpha = glyph.clamp(0, 1)
        y0 = int(torch.randint(size - side + 1, (1,), generator=generator))
        x0 = int(torch.randint(size - side + 1, (1,), generator=generator))
        # A colour that stands out: bright, or dark on a bright background.
        region = background[:, y0 : y0 + side, x0 : x0 + side]
        hue = torch.rand(3, generator=generator)
        colour = 0.6 + 0.4 * hue if float(region.mean()) < 0.5 else 0.35 * hue
        region.mul_(1 - alpha).add_(colour[:, None, None] * alpha)

        ys, xs = torch.nonzero(alpha > 0.25, as_tuple=True)
        boxes[i] = torch.tensor(
            [x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1]
        )
        images[i] = (background * 255).round().clamp(0, 255).to(torch.uint8)
    return images, labels[chosen], boxes


def demo_object_masks(boxes: torch.Tensor, size: int = DEMO_SIZE) -> torch.Tensor:
    """Boolean masks ``(n, size, size)`` that are True inside each box."""
    coords = torch.arange(size, device=boxes.device)
    inside_x = (coords[None, :] >= boxes[:, 0:1]) & (coords[None, :] < boxes[:, 2:3])
    inside_y = (coords[None, :] >= boxes[:, 1:2]) & (coords[None, :] < boxes[:, 3:4])
    return inside_y[:, :, None] & inside_x[:, None, :]


def demo_preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(n, 3, H, W)`` images to the normalised float input DemoNet expects."""
    mean = torch.tensor(DEMO_MEAN, device=images.device)[:, None, None]
    std = torch.tensor(DEMO_STD, device=images.device)[:, None, None]
    return (images.float() / 255 - mean) / std


def demo_model(device: str | torch.device = "cpu") -> DemoNet:
    """The bundled demo CNN (``camkit.demo_model()``): 64x64 RGB digits-on-photos, 10 classes, in eval mode, offline."""
    return load_demo_model(device)


def demo_images(
    n: int = 8, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` held-out demo images (``camkit.demo_images()``): the model's input, the uint8 images and the labels.

    ``x`` is normalised for :func:`demo_model`; ``images`` (uint8 ``(n, 3, 64, 64)``) are what to draw maps
    on (``result.with_display(images)``); ``labels`` are the digits.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CamkitError(f"n must be a positive number of images, got {n!r}.")
    images, labels, _ = make_demo_dataset(n, seed, split="test")
    images = images.to(device)
    return demo_preprocess(images), images, labels.to(device)


def load_demo_model(map_location: str | torch.device = "cpu") -> DemoNet:
    """The shipped DemoNet, in eval mode (weights loaded with ``weights_only=True``)."""
    model = DemoNet()
    weights = resources.files("camkit").joinpath("weights", WEIGHTS_FILE)
    with resources.as_file(weights) as path:
        state = torch.load(path, map_location=map_location, weights_only=True)
    model.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    return model.to(map_location).eval()
