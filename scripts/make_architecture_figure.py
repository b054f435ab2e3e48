"""Draw assets/architectures.png: each torchvision family's automatic layer and every method's map.

The models are randomly initialised (nothing is downloaded), so the maps show
that every method runs on every family, not what a trained model looks at.

    python scripts/make_architecture_figure.py
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import camkit
from camkit.viz import IMAGENET_MEAN, IMAGENET_STD, overlay_grid

FAMILIES = ("resnet50", "vgg16", "densenet121", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf",
            "convnext_tiny", "vit_b_16", "swin_t", "maxvit_t")


def main() -> None:
    torch.manual_seed(0)
    from sklearn.datasets import load_sample_image

    photo = torch.tensor(load_sample_image("flower.jpg")).permute(2, 0, 1)[None].float() / 255
    image = F.interpolate(photo[:, :, 50:400, 150:500], size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (image - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    # one column per method that every family can run (the attention methods need a transformer)
    columns = {name: [] for name, cls in camkit.METHODS.items() if not issubclass(cls, camkit.AttentionExplainer)}
    rows, layers = [], []
    for family in FAMILIES:
        model = torchvision.models.get_model(family, weights=None).eval()
        if family == "vit_b_16":
            torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # zero-initialised by torchvision
        for name in columns:
            cls = camkit.METHODS[name]
            options = {"n_samples": 4} if name == "smoothgradcam++" else {}
            explainer = cls(model, **options)
            columns[name].append(explainer(x))
        layers.append(f"{family}\n{explainer.target_layer_name}")
        rows.append(image)
        print(family, explainer.target_layer_name)
    images = torch.cat(rows)
    figure = overlay_grid(images, [(name, torch.cat(maps)) for name, maps in columns.items()],
                          [[layer] + [""] * len(columns) for layer in layers], panel_size=1.6)
    figure.savefig(Path(__file__).resolve().parent.parent / "assets" / "architectures.png", dpi=60)


if __name__ == "__main__":
    main()
