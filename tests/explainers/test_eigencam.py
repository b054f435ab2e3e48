"""Eigen-CAM against numpy's SVD with the sign rule."""
from __future__ import annotations


import numpy as np
import torch
import torchvision

import camkit

from ..helpers import reference_finish


def test_eigencam_equals_numpy_svd_with_sign_rule() -> None:
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 96, 64)
    store = {}
    handle = model.layer4.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    activations = store["a"].double().numpy()
    projections = []
    for image in activations:
        positions = image.reshape(image.shape[0], -1).T
        centred = positions - positions.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        projection = centred @ vt[0]
        channel_mean = positions.mean(axis=1)
        if np.corrcoef(projection, channel_mean)[0, 1] < 0:
            projection = -projection
        projections.append(projection.reshape(image.shape[1:]))
    expected = reference_finish(torch.from_numpy(np.stack(projections)), (96, 64))
    ours = camkit.EigenCAM(model, "layer4")(x)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)


def test_eigencam_sign_follows_channel_mean() -> None:
    # One bright blob in every channel: the map must peak on the blob, not around it.
    from camkit.ops.pca import principal_projection

    activations = torch.rand(2, 16, 7, 7) * 0.1
    activations[:, :, 2, 3] += 5.0
    projection = principal_projection(activations)
    assert torch.equal(projection.flatten(1).argmax(1), torch.tensor([2 * 7 + 3] * 2))
