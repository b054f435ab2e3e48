"""A toy task the tests train a CNN on in seconds: which shape is in the picture, and where."""
from __future__ import annotations

import torch
from torch import nn

CLASSES = ("square", "horizontal bar", "vertical bar", "cross")
SIZE = 32


def make_shapes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images ``(n, 3, 32, 32)``, labels ``(n,)`` and object masks ``(n, 32, 32)``."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.randn(n, 3, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, len(CLASSES), (n,), generator=generator)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    corners = torch.randint(2, SIZE - 12, (n, 2), generator=generator).tolist()
    for i, ((top, left), label) in enumerate(zip(corners, labels.tolist())):
        if label == 0:
            masks[i, top : top + 8, left : left + 8] = True
        if label in (1, 3):
            masks[i, top + 4 : top + 7, left : left + 10] = True
        if label in (2, 3):
            masks[i, top : top + 10, left + 4 : left + 7] = True
    images = images + 1.5 * masks[:, None].float()
    return images, labels, masks


class ShapesNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(48, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def train_shapes_net(steps: int = 300, seed: int = 0) -> tuple[ShapesNet, float]:
    """A trained ShapesNet and its held-out accuracy."""
    torch.manual_seed(seed)
    model = ShapesNet()
    images, labels, _ = make_shapes(4096, seed=seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        index = torch.randint(0, len(images), (64,))
        loss = nn.functional.cross_entropy(model(images[index]), labels[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    test_images, test_labels, _ = make_shapes(512, seed=seed + 1000)
    with torch.no_grad():
        accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
    return model, accuracy
