"""Robustness: does the map stay put when the input or the gradients are disturbed? One value per image.

``max_sensitivity`` / ``avg_sensitivity`` (Yeh et al., NeurIPS 2019) and
``local_lipschitz_estimate`` (Alvarez-Melis & Jaakkola, 2018) as Quantus 0.6
computes them, with the explained class pinned to the clean image's. All
perturbed copies run through the explainer as batches (``batch_size`` images
per call). ``perturb`` replaces the default noise: it receives the copies,
``(samples * B, C, H, W)`` sample-major, and returns them perturbed.

``gradient_noise_stability`` adds Gaussian noise to the captured gradients
(CF-CAM's robustness claim); ``coherency``, ``adcc`` and ``arcc`` are Poppi et
al.'s summary scores (CVPRW 2021, arXiv:2104.10252) as pytorch-grad-cam computes them.

Every function takes ``inputs=``, the model's other inputs as an explainer
takes them: they go to every explainer call, per-image inputs following their
images into the perturbed copies, and to the model calls of the faithfulness
terms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..calls import InputsSpec, ModelCall
from ..capture import transformed_gradients
from ..errors import CamkitError
from ..targets import TargetSpec, as_target
from .complexity import l1_complexity
from .faithfulness import average_drop, explained_classes
from .road import road_combined
from .sanity import _explained, spearman

Perturb = Callable[[torch.Tensor], torch.Tensor]


def max_sensitivity(
    explainer: Any,
    x: torch.Tensor,
    target: TargetSpec = None,
    *,
    samples: int = 10,
    radius: float = 0.2,
    seed: int | torch.Tensor = 0,
    perturb: Perturb | None = None,
    batch_size: int = 64,
    inputs: InputsSpec = None,
) -> torch.Tensor:
    """The largest ||e(x') - e(x)|| / ||e(x)|| over ``samples`` copies x' = x + U(-radius, radius) (lower: steadier)."""
    return _sensitivities(explainer, x, target, samples, radius, seed, perturb, batch_size, inputs).amax(dim=1)


def avg_sensitivity(
    explainer: Any,
    x: torch.Tensor,
    target: TargetSpec = None,
    *,
    samples: int = 10,
    radius: float = 0.2,
    seed: int | torch.Tensor = 0,
    perturb: Perturb | None = None,
    batch_size: int = 64,
    inputs: InputsSpec = None,
) -> torch.Tensor:
    """The mean of ||e(x') - e(x)|| / ||e(x)|| over the copies (see :func:`max_sensitivity`)."""
    return _sensitivities(explainer, x, target, samples, radius, seed, perturb, batch_size, inputs).mean(dim=1)


def local_lipschitz_estimate(
    explainer: Any,
    x: torch.Tensor,
    target: TargetSpec = None,
    *,
    samples: int = 10,
    radius: float = 0.1,
    seed: int | torch.Tensor = 0,
    perturb: Perturb | None = None,
    batch_size: int = 64,
    inputs: InputsSpec = None,
) -> torch.Tensor:
    """The largest ||e(x') - e(x)|| / (||x' - x|| + 1e-10) over copies x' = x + N(0, radius^2), Quantus' estimate."""
    clean, maps, copies = _perturbed_maps(
        explainer,
        x,
        target,
        samples,
        seed,
        perturb,
        batch_size,
        lambda shape, **options: torch.randn(shape, **options) * radius,
        inputs,
    )
    steps = (copies - x.repeat(samples, *([1] * (x.dim() - 1)))).flatten(1).double().norm(dim=1)
    changes = (maps - clean.repeat(samples, 1, 1)).flatten(1).double().norm(dim=1)
    return (changes / (steps + 1e-10)).reshape(samples, x.shape[0]).amax(dim=0)


def gradient_noise_stability(
    explainer: Any,
    x: torch.Tensor,
    target: TargetSpec = None,
    *,
    sigma: float = 0.1,
    samples: int = 4,
    seed: int | torch.Tensor = 0,
    inputs: InputsSpec = None,
) -> dict[str, torch.Tensor]:
    """Similarity of the map to maps whose captured gradients got Gaussian noise of ``sigma`` times their std.

    ``seed``: an int, or one seed per image (a tensor) so that an image's
    noise does not depend on the batch it is in.

    Each image's gradient at the target layer gets ``N(0, (sigma * std)^2)``
    noise, std over that image's gradient; the rest of the method runs as
    usual. Returns ``spearman`` and ``ssim`` ``(B,)``, means over ``samples``
    noisy copies; both are 1 at ``sigma = 0``, and for gradient-free methods.
    """
    if sigma < 0 or samples < 1:
        raise CamkitError(f"sigma must be >= 0 and samples >= 1, got sigma={sigma}, samples={samples}.")
    target = _pinned(explainer, x, target, inputs)
    clean = _explained(explainer, x, target, inputs)
    seeds = image_seeds(seed, x.shape[0])
    maps = []
    for sample in range(samples):
        calls = iter(range(1 << 30))

        def noisy(gradient: torch.Tensor, sample: int = sample, calls=calls) -> torch.Tensor:
            # Rows run copy-major (row r is image r % B) in every capture a method makes; each row's noise
            # comes from its image's seed, the sample and the capture's count, whatever the batch holds.
            call = next(calls)
            noise = torch.stack(
                [
                    draw(torch.randn, tuple(gradient.shape[1:]), seeds[row % len(seeds)], sample * 4099 + call)
                    for row in range(gradient.shape[0])
                ]
            )
            spread = gradient.flatten(1).double().std(dim=1).reshape(-1, *([1] * (gradient.dim() - 1)))
            return (gradient.double() + sigma * spread * noise.to(gradient.device)).to(gradient.dtype)

        with transformed_gradients(noisy):
            maps.append(_explained(explainer, x, target, inputs))
    noisy_maps = torch.cat(maps)
    reference = clean.repeat(samples, 1, 1)
    return {
        "spearman": spearman(noisy_maps, reference).double().reshape(samples, -1).mean(dim=0),
        "ssim": ssim(noisy_maps, reference).reshape(samples, -1).mean(dim=0),
    }


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, sigma: float = 1.5) -> torch.Tensor:
    """Per-image structural similarity of ``(B, H, W)`` maps, float64, as scikit-image's Gaussian-weighted SSIM.

    ``structural_similarity(a, b, data_range=1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``: an 11-pixel Gaussian window,
    the mean over the positions where it fits inside the image.
    """
    radius = int(3.5 * sigma + 0.5)
    if min(a.shape[-2:]) < 2 * radius + 1:
        raise CamkitError(
            f"SSIM needs maps of at least {2 * radius + 1} x {2 * radius + 1} pixels, got {tuple(a.shape[-2:])}."
        )
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=a.device)
    window = torch.exp(-0.5 * (offsets / sigma) ** 2)
    window = window / window.sum()

    def blur(values: torch.Tensor) -> torch.Tensor:
        values = F.conv2d(values[:, None], window.reshape(1, 1, 1, -1))
        return F.conv2d(values, window.reshape(1, 1, -1, 1))[:, 0]

    a, b = a.double(), b.double()
    mean_a, mean_b = blur(a), blur(b)
    var_a = blur(a * a) - mean_a**2
    var_b = blur(b * b) - mean_b**2
    covariance = blur(a * b) - mean_a * mean_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    return index.flatten(1).mean(dim=1)


def coherency(
    explainer: Any,
    x: torch.Tensor,
    target: TargetSpec = None,
    maps: torch.Tensor | None = None,
    *,
    inputs: InputsSpec = None,
) -> torch.Tensor:
    """(Pearson(map, map of x * map) + 1) / 2, as pytorch-grad-cam's ``Coherency`` (Poppi et al.); 1 is best.

    The second map explains the same class as the first. ``maps``: the
    explainer's maps of ``x`` when already computed.
    """
    target = _pinned(explainer, x, target, inputs)
    maps = _explained(explainer, x, target, inputs) if maps is None else maps
    again = _explained(explainer, x * maps[:, None], target, inputs)
    a, b = again.flatten(1).double(), maps.flatten(1).double()
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    count = a.shape[1] - 1
    correlation = ((a * b).sum(dim=1) / count) / (
        (a.pow(2).sum(dim=1) / count).sqrt() * (b.pow(2).sum(dim=1) / count).sqrt() + 1e-8
    )
    return (correlation + 1) / 2


def adcc(
    explainer: Any,
    x: torch.Tensor,
    target: TargetSpec = None,
    maps: torch.Tensor | None = None,
    *,
    inputs: InputsSpec = None,
) -> torch.Tensor:
    """ADCC (Poppi et al.): harmonic mean of coherency, 1 - complexity (mean map value) and 1 - average drop."""
    target = _pinned(explainer, x, target, inputs)
    maps = _explained(explainer, x, target, inputs) if maps is None else maps
    drop = average_drop(explainer.model, x, maps, target, inputs=inputs).double() / 100
    terms = (coherency(explainer, x, target, maps, inputs=inputs), 1 - l1_complexity(maps), 1 - drop)
    return 3 / (1 / terms[0] + 1 / terms[1] + 1 / terms[2])


def arcc(
    explainer: Any,
    x: torch.Tensor,
    target: TargetSpec = None,
    maps: torch.Tensor | None = None,
    *,
    percentiles: tuple[int, ...] = (20, 40, 60, 80),
    inputs: InputsSpec = None,
    **road_options: Any,
) -> torch.Tensor:
    """ARCC, as pytorch-grad-cam's: ADCC with ROAD's combined score (times 2, clipped to [0, 1]) for the drop.

    Each term gets pytorch-grad-cam's + 1e-8. ``road_options`` go to
    :func:`camkit.metrics.road_combined` (noise, seed, baseline).
    """
    target = _pinned(explainer, x, target, inputs)
    maps = _explained(explainer, x, target, inputs) if maps is None else maps
    road = road_combined(
        explainer.model, x, maps, target, percentiles=percentiles, inputs=inputs, **road_options
    ).double()
    terms = (coherency(explainer, x, target, maps, inputs=inputs), 1 - l1_complexity(maps), (road * 2).clamp(0, 1))
    return 3 / (1 / (terms[0] + 1e-8) + 1 / (terms[1] + 1e-8) + 1 / (terms[2] + 1e-8))


def image_seeds(seed: int | torch.Tensor, batch: int) -> list[int]:
    """One seed per image: a tensor gives them; an int ``s`` gives image b the seed ``s * 1000003 + b``."""
    if isinstance(seed, torch.Tensor):
        values = [int(value) for value in seed.reshape(-1).tolist()]
        if len(values) != batch:
            raise CamkitError(f"seed holds {len(values)} seeds for a batch of {batch} images; give one per image.")
        return values
    return [int(seed) * 1000003 + image for image in range(batch)]


def draw(sampler: Callable[..., torch.Tensor], shape: tuple[int, ...], seed: int, stream: int) -> torch.Tensor:
    """``sampler(shape, generator=...)`` in float64 on the CPU from (seed, stream): the same on every device."""
    generator = torch.Generator().manual_seed((seed * 1000003 + stream) % (1 << 63))
    return sampler(shape, generator=generator, dtype=torch.float64)


def _pinned(explainer: Any, x: torch.Tensor, target: TargetSpec, inputs: InputsSpec = None) -> TargetSpec:
    """The clean images' classes, so that every copy explains the same class; a callable target (one for all,
    or one per image) stays as it is."""
    names = explainer.model_class_names() if hasattr(explainer, "model_class_names") else None
    target = as_target(target, names)
    if callable(target) and not isinstance(target, torch.Tensor):
        return target
    return explained_classes(explainer.model, x, target, inputs)


def _sensitivities(
    explainer: Any,
    x: torch.Tensor,
    target: TargetSpec,
    samples: int,
    radius: float,
    seed: Any,
    perturb: Perturb | None,
    batch_size: int,
    inputs: InputsSpec,
) -> torch.Tensor:
    """``(B, samples)`` ||e(x') - e(x)||_F / ||e(x)||_F (NaN where the clean map is all zero)."""
    clean, maps, _ = _perturbed_maps(
        explainer,
        x,
        target,
        samples,
        seed,
        perturb,
        batch_size,
        lambda shape, **options: (torch.rand(shape, **options) * 2 - 1) * radius,
        inputs,
    )
    size = clean.flatten(1).double().norm(dim=1)
    changes = (maps - clean.repeat(samples, 1, 1)).flatten(1).double().norm(dim=1).reshape(samples, -1)
    return (changes / torch.where(size > 0, size, torch.nan)).T


def _perturbed_maps(
    explainer: Any,
    x: torch.Tensor,
    target: TargetSpec,
    samples: int,
    seed: Any,
    perturb: Perturb | None,
    batch_size: int,
    noise: Callable[..., torch.Tensor],
    inputs: InputsSpec = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The clean maps, the maps of the perturbed copies and the copies (sample-major)."""
    if samples < 1:
        raise CamkitError(f"samples must be at least 1, got {samples}.")
    target = _pinned(explainer, x, target, inputs)
    clean = _explained(explainer, x, target, inputs)
    copies = x.repeat(samples, *([1] * (x.dim() - 1)))
    if perturb is None:
        seeds = image_seeds(seed, x.shape[0])
        drawn = torch.stack(
            [
                draw(noise, tuple(x.shape[1:]), seeds[image], sample)
                for sample in range(samples)
                for image in range(x.shape[0])
            ]
        )
        copies = copies + drawn.to(copies.device, copies.dtype)
    else:
        copies = perturb(copies)
        if not isinstance(copies, torch.Tensor) or copies.shape != (samples * x.shape[0], *x.shape[1:]):
            raise CamkitError(
                f"perturb must return a tensor of the copies' shape {(samples * x.shape[0], *x.shape[1:])}."
            )
    call = ModelCall.of(explainer.model, x, inputs) if inputs is not None else None
    return clean, _maps_of_copies(explainer, copies, target, x.shape[0], batch_size, call), copies


def _maps_of_copies(
    explainer: Any,
    copies: torch.Tensor,
    target: TargetSpec,
    batch: int,
    batch_size: int,
    call: ModelCall | None = None,
) -> torch.Tensor:
    """Maps of sample-major copies of a batch, whole copies per call (one per call for a callable target);
    ``call``: the clean batch's model call, whose per-image inputs each call's rows take."""
    per_call = (
        batch if callable(target) and not isinstance(target, torch.Tensor) else batch * max(1, batch_size // batch)
    )
    parts = []
    for start in range(0, copies.shape[0], per_call):
        rows = copies[start : start + per_call]
        part_target = target.repeat(rows.shape[0] // batch) if isinstance(target, torch.Tensor) else target
        if call is None:
            parts.append(explainer(rows, part_target))
        else:
            images = torch.arange(start, start + rows.shape[0], device=call.x.device) % batch
            parts.append(explainer(rows, part_target, inputs=call.rows(images, rows).inputs()))
    return torch.cat(parts)
