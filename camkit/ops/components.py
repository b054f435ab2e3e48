"""Connected components of batches of binary images, in torch on their device.

Labels are found by hooking and pointer jumping (Shiloach-Vishkin style):
every pixel points at the smallest index it has heard of in its component;
each round lets roots adopt their members' smallest neighbouring label and
then shortcuts the pointers, so a blob of diameter d needs about log(d)
rounds rather than d rounds of plain label propagation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def connected_components(mask: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """``(N, H, W)`` bool to ``(N, H * W)`` long labels: each pixel's component as its smallest row-major index.

    Background pixels get ``H * W``. ``connectivity`` is 8 (diagonal
    neighbours join) or 4. The smallest index is also the pixel where a
    row-major scan (as OpenCV's border following) first meets the component.
    """
    count, height, width = mask.shape
    pixels = height * width
    flat = mask.reshape(count, pixels)
    # A spare column at index `pixels` absorbs the background's writes and reads.
    parents = torch.full((count, pixels + 1), pixels, dtype=torch.long, device=mask.device)
    parents[:, :pixels] = torch.where(flat, torch.arange(pixels, device=mask.device), pixels)
    while True:
        labels = parents[:, :pixels]
        smallest = torch.where(
            flat, _neighbour_minimum(labels.reshape(count, height, width), connectivity).reshape(count, pixels), pixels
        )
        hooked = parents.scatter_reduce(1, labels, smallest, reduce="amin")
        hooked[:, :pixels] = torch.minimum(hooked[:, :pixels], smallest)
        while True:
            jumped = hooked.gather(1, hooked)
            if torch.equal(jumped, hooked):
                break
            hooked = jumped
        if torch.equal(hooked, parents):
            return parents[:, :pixels]
        parents = hooked


def _neighbour_minimum(labels: torch.Tensor, connectivity: int) -> torch.Tensor:
    """The smallest label in each pixel's neighbourhood (itself included); outside the image counts as none."""
    big = labels.shape[1] * labels.shape[2]
    if connectivity == 8:
        # Labels are below 2**24, exact in float32, the dtype max pooling takes on every device.
        pooled = -F.max_pool2d(-labels[:, None].float(), kernel_size=3, stride=1, padding=1)
        return pooled[:, 0].long()
    padded = F.pad(labels, (1, 1, 1, 1), value=big)
    return torch.stack(
        [labels, padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]]
    ).amin(dim=0)
