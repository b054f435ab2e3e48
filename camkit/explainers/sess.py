"""SESS: a base method's maps of patches cut at several scales by a sliding window, weighted and fused back."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..calls import ModelCall
from ..capture import Capture, capture
from ..errors import CamkitError, CamkitTypeError
from ..layers import LayersSpec
from ..layouts import patch_size_of
from ..targets import TargetSpec, logits_of, scores_for, target_rows
from .base import Explainer
from .registry import METHODS, register

Pool = Literal["mean", "max"]
# cv2.GaussianBlur(cam, (11, 11), 5.0), pytorch-grad-cam's smoothing of the fused map.
BLUR_SIZE, BLUR_SIGMA = 11, 5.0


@dataclass
class FusedCapture(Capture):
    """A clean capture together with SESS's fused map at the input's resolution, ``(B, H, W)``."""

    fused: torch.Tensor | None = None


@dataclass(frozen=True)
class PatchGrid:
    """Where every patch comes from: the scaled sizes and, per patch, its scale and top-left corner.

    Patches are numbered scale by scale, row by row; every image of a batch has
    the same patches, so rows of a patch batch are ``patch * B + image``.
    """

    window: int
    sizes: tuple[tuple[int, int], ...]  # (height, width) of the image at each scale
    scale: torch.Tensor  # (P,) index into sizes
    top: torch.Tensor  # (P,)
    left: torch.Tensor  # (P,)

    @property
    def count(self) -> int:
        return int(self.scale.numel())


@register(
    "sess",
    paper="Sun et al., SESS: Saliency Enhancing with Scaling and Sliding, ECCV 2022 (arXiv:2207.01769)",
)
class SESS(Explainer):
    """A base method's maps of windows cut from the image at several scales, weighted by their class scores, fused.

    The image is resized so its shorter side is each of ``scales`` (default:
    ``num_scales`` sizes from the window size up in steps of
    ``scale_step_ratio`` x window), a ``window_size`` square (default: the
    shorter side) slides over each with stride ``step_size`` (default: the
    window; the last window of a row or column is moved back inside). Every
    patch is scored (the target's softmax probability, or its raw score
    clipped at 0 with ``use_softmax_scores=False``); the lowest
    ``pre_filter_ratio`` of each image's patches are dropped; the base
    method's map of each remaining patch, times score / the image's best
    score, is pasted at its place in its scale and resized to the input;
    ``pool="mean"`` averages each pixel over the patches whose value there
    exceeds ``theta``, ``"max"`` takes the maximum; ``smooth`` blurs the result
    (Gaussian, 11 x 11, sigma 5). ``base``: a method's name or class
    (default Grad-CAM); options SESS does not know go to it. ``batch_size``:
    patches per pass (default as every method: 8, or the input batch when
    larger); patches of all images share passes. 2-D images only.
    """

    # Patches are scored by class probabilities; a detection's score has no value on a patch it may not be in.
    needs_class_logits = True
    # The CLI's --samples N sets the scales: `--method all --samples 2` runs 5 patches per image, not 122 (64 x 64 demo).
    samples_option: ClassVar[str] = "num_scales"
    cost: ClassVar[str] = "a forward + the base's passes per patch (113 per 224 x 224 image at the defaults)"

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayersSpec = None,
        *,
        base: str | type[Explainer] = "gradcam",
        scales: Sequence[int] | None = None,
        num_scales: int = 12,
        scale_step_ratio: float = 2.0 / 7.0,
        window_size: int | None = None,
        step_size: int | None = None,
        pre_filter_ratio: float = 0.0,
        theta: float = 0.0,
        pool: Pool = "mean",
        smooth: bool = True,
        use_softmax_scores: bool = True,
        **options: Any,
    ) -> None:
        base_class = _base_class(base)
        own = {key: options.pop(key) for key in ("augment", "batch_size", "class_names") if key in options}
        # reshape and fuse belong to the base, which reads the layers; SESS keeps (and checks) them too
        shared = {key: options[key] for key in ("reshape", "fuse") if key in options}
        super().__init__(model, target_layer, **shared, **own)
        self.base = base_class(model, [name for name, _ in self.layers] or None, **options)
        self.uses_gradients = self.base.uses_gradients
        self.scales = _checked_scales(scales)
        self.num_scales = _positive_int("num_scales", num_scales)
        if not isinstance(scale_step_ratio, (int, float)) or isinstance(scale_step_ratio, bool) or scale_step_ratio < 0:
            raise CamkitError(f"scale_step_ratio must be a non-negative number, got {scale_step_ratio!r}.")
        self.scale_step_ratio = float(scale_step_ratio)
        self.window_size = None if window_size is None else _positive_int("window_size", window_size)
        self.step_size = None if step_size is None else _positive_int("step_size", step_size)
        if not isinstance(pre_filter_ratio, (int, float)) or not 0.0 <= pre_filter_ratio < 1.0:
            raise CamkitError(
                f"pre_filter_ratio must be in [0, 1) (the share of patches dropped), got {pre_filter_ratio!r}."
            )
        self.pre_filter_ratio = float(pre_filter_ratio)
        if not isinstance(theta, (int, float)) or isinstance(theta, bool):
            raise CamkitError(f"theta must be a number (the value a patch's map must exceed to count), got {theta!r}.")
        self.theta = float(theta)
        if pool not in ("mean", "max"):
            raise CamkitError(f"pool must be 'mean' or 'max', got {pool!r}.")
        self.pool: Pool = pool
        for flag, value in (("smooth", smooth), ("use_softmax_scores", use_softmax_scores)):
            if not isinstance(value, bool):
                raise CamkitTypeError(f"{flag} must be True or False, got {value!r}.")
        self.smooth, self.use_softmax_scores = smooth, use_softmax_scores

    def capture(self, call: ModelCall, target: TargetSpec) -> list[Capture]:
        """The clean pass (the explained class of each image), then every patch scored, explained and fused."""
        if call.x.dim() != 4:
            raise CamkitError(f"SESS explains 2-D images (B, C, H, W); got shape {tuple(call.x.shape)}.")
        self.base.layers = self.layers
        with torch.no_grad():
            clean = capture(
                self.model,
                self.layers[:1],
                call,
                target,
                with_gradients=False,
                reshape=self.reshape,
                patch_size=patch_size_of(self.model),
            )[0]
        grid = self.patch_grid(tuple(call.x.shape[2:]))
        scaled = [_resized(call.x.detach(), size) for size in grid.sizes]
        per_pass = self.images_per_pass(call.batch)
        with torch.no_grad():
            scores = self._patch_scores(call, scaled, grid, clean.classes, target, per_pass)
        kept, weights = self._kept_patches(scores)
        # float32 whatever the model's dtype (a half model's scores weigh the patches): maps are float32 everywhere
        fused = self._fused(call, scaled, grid, clean.classes, target, kept, weights, per_pass).float()
        if self.smooth:
            fused = gaussian_blur(fused, BLUR_SIZE, BLUR_SIGMA)
        values = {field.name: getattr(clean, field.name) for field in fields(Capture)}
        return [FusedCapture(**values, fused=fused)]

    def layer_map(self, captured: Capture) -> torch.Tensor:
        if not isinstance(captured, FusedCapture) or captured.fused is None:
            raise CamkitError("SESS's maps come from its own capture step; call the explainer.")
        return captured.fused.float()  # under autocast the blur's convolution gave the autocast dtype

    def patch_grid(self, size: tuple[int, ...]) -> PatchGrid:
        """The scales and windows for images of ``size`` (H, W)."""
        height, width = size
        window = self.window_size if self.window_size is not None else min(height, width)
        step = self.step_size if self.step_size is not None else window
        if self.scales is not None:
            scales = list(self.scales)
        else:
            stride = round(window * self.scale_step_ratio)
            scales = [window + stride * i for i in range(self.num_scales)]
        sizes, scale_index, tops, lefts = [], [], [], []
        for index, scale in enumerate(scales):
            if scale < window:
                raise CamkitError(
                    f"Every scale must be at least the window size {window} (the shorter side resized to it must "
                    f"hold a window); got scale {scale}. Give larger scales= or a smaller window_size=."
                )
            scaled = _shorter_side_to(scale, height, width)
            sizes.append(scaled)
            for top in _window_starts(scaled[0], step, window):
                for left in _window_starts(scaled[1], step, window):
                    scale_index.append(index)
                    tops.append(top)
                    lefts.append(left)
        as_tensor = torch.tensor
        return PatchGrid(window, tuple(sizes), as_tensor(scale_index), as_tensor(tops), as_tensor(lefts))

    def _patch_scores(
        self,
        call: ModelCall,
        scaled: list[torch.Tensor],
        grid: PatchGrid,
        classes: torch.Tensor | None,
        target: TargetSpec,
        per_pass: int,
    ) -> torch.Tensor:
        """``(P, B)`` every patch's score for its image's target (probability, or raw score), clipped at 0."""
        parts = []
        for rows in _chunks(grid.count * call.batch, per_pass, call.x.device):
            patches, images = _patches(scaled, grid, rows, call.batch)
            try:
                output = call.rows(images, patches).run(self.model)
            except CamkitError:
                raise
            except Exception as error:
                if tuple(patches.shape[2:]) == tuple(call.x.shape[2:]):
                    raise
                # A model built for one input size (timm's ViTs assert it) cannot take SESS's square windows.
                raise CamkitError(
                    f"SESS feeds the model {grid.window} x {grid.window} windows (window_size; by default the "
                    f"input's shorter side) and it refused them ({type(error).__name__}: {error}); for a model "
                    f"that takes only {call.x.shape[2]} x {call.x.shape[3]} inputs, explain square images whose side "
                    "is its input size, or use another method."
                ) from error
            scored = logits_of(output).float().softmax(dim=-1) if self.use_softmax_scores else output
            row_target = classes[images] if classes is not None else target_rows(target, images)
            parts.append(scores_for(scored, row_target, rows.numel())[0].float())
        return torch.cat(parts).reshape(grid.count, call.batch).clamp_min(0)

    def _kept_patches(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's best patches after pre-filtering, ``(kept, B)`` indices, and their weights score / best."""
        count = scores.shape[0]
        kept = torch.argsort(scores, dim=0)[int(count * self.pre_filter_ratio) :]
        best = scores.amax(dim=0, keepdim=True)
        weights = torch.where(best > 0, scores / torch.where(best > 0, best, 1.0), 1.0)
        return kept, weights.gather(0, kept)

    def _fused(
        self,
        call: ModelCall,
        scaled: list[torch.Tensor],
        grid: PatchGrid,
        classes: torch.Tensor | None,
        target: TargetSpec,
        kept: torch.Tensor,
        weights: torch.Tensor,
        per_pass: int,
    ) -> torch.Tensor:
        """The kept patches' weighted base maps, pasted at their scale, resized to the input and pooled."""
        batch, size = call.batch, tuple(call.x.shape[2:])
        device = call.x.device
        total = torch.zeros(batch, *size, device=device)
        counts = torch.zeros_like(total)
        patch_rows = (kept * batch + torch.arange(batch, device=kept.device)).reshape(-1).to(device)
        row_weights = weights.reshape(-1).to(device)
        for chunk in _chunks(patch_rows.numel(), per_pass, device):
            rows = patch_rows[chunk]
            patches, images = _patches(scaled, grid, rows, batch)
            row_target = classes[images] if classes is not None else target_rows(target, images)
            sub = call.rows(images, patches)
            inputs = dict(sub.kwargs) if sub.kwargs else (sub.args or None)
            maps = self.base.explain(patches, row_target, inputs=inputs).maps.float() * row_weights[chunk, None, None]
            for placed, image_rows in _pasted(maps, grid, rows // batch, images, size):
                flat = placed.flatten(1)
                if self.pool == "max":
                    total.view(batch, -1).scatter_reduce_(0, image_rows[:, None].expand_as(flat), flat, "amax")
                else:  # sums per image as one matrix product (index_add_ runs serially on the CPU)
                    owner = F.one_hot(image_rows, batch).T.to(flat.dtype)
                    counted = flat > self.theta
                    total.view(batch, -1).addmm_(owner, torch.where(counted, flat, 0.0))
                    counts.view(batch, -1).addmm_(owner, counted.to(flat.dtype))
        if self.pool == "max":
            return total
        return torch.where(counts > 0, total / counts.clamp_min(1), 0.0)


def gaussian_blur(maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """``(B, H, W)`` blurred as OpenCV's GaussianBlur: separable kernel, borders reflected without the edge pixel."""
    offsets = torch.arange(size, dtype=torch.float64, device=maps.device) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    pad = size // 2
    height, width = maps.shape[-2:]
    # Reflection needs the border to be wider than the padding; tiny maps repeat their edge instead.
    mode = "reflect" if min(height, width) > pad else "replicate"
    blurred = F.pad(maps.unsqueeze(1), (pad, pad, pad, pad), mode=mode)
    blurred = F.conv2d(blurred, kernel.reshape(1, 1, 1, size))
    return F.conv2d(blurred, kernel.reshape(1, 1, size, 1)).squeeze(1)


def _patches(
    scaled: list[torch.Tensor], grid: PatchGrid, rows: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The patches of rows ``rows`` (``patch * B + image``), ``(n, C, w, w)``, and their images ``(n,)``."""
    device = scaled[0].device
    patch, images = (rows // batch).cpu(), rows % batch
    steps = torch.arange(grid.window, device=device)
    out = scaled[0].new_empty(rows.numel(), scaled[0].shape[1], grid.window, grid.window)
    for index in grid.scale[patch].unique().tolist():  # one gather per scale present in the pass
        mine = (grid.scale[patch] == index).nonzero().squeeze(1).to(device)
        ys = grid.top[patch[mine.cpu()]].to(device)[:, None, None] + steps[None, :, None]
        xs = grid.left[patch[mine.cpu()]].to(device)[:, None, None] + steps[None, None, :]
        # Advanced indices around the channel slice: (n, w, w, C), only the windows' pixels read.
        out[mine] = scaled[index][images[mine][:, None, None], :, ys, xs].permute(0, 3, 1, 2)
    return out, images


def _pasted(
    maps: torch.Tensor, grid: PatchGrid, patch: torch.Tensor, images: torch.Tensor, size: tuple[int, ...]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each scale's maps placed at their windows on a zero canvas of that scale, resized to ``size``."""
    patch = patch.cpu()
    steps = torch.arange(grid.window, device=maps.device)
    for index in grid.scale[patch].unique().tolist():
        mine = (grid.scale[patch] == index).nonzero().squeeze(1).to(maps.device)
        height, width = grid.sizes[index]
        canvas = maps.new_zeros(mine.numel(), height, width)
        ys = grid.top[patch[mine.cpu()]].to(maps.device)[:, None, None] + steps[None, :, None]
        xs = grid.left[patch[mine.cpu()]].to(maps.device)[:, None, None] + steps[None, None, :]
        canvas[torch.arange(mine.numel(), device=maps.device)[:, None, None], ys, xs] = maps[mine]
        # cv2.resize(INTER_LINEAR): bilinear with half-pixel centres, no antialiasing.
        placed = F.interpolate(canvas.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        yield placed, images[mine]


def _resized(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's ``resize``: bilinear, antialiased when shrinking."""
    if tuple(x.shape[2:]) == size:
        return x
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True).to(x.dtype)


def _shorter_side_to(scale: int, height: int, width: int) -> tuple[int, int]:
    """The size with the shorter side ``scale`` and the aspect kept (torchvision's ``resize(img, scale)``)."""
    short, long = min(height, width), max(height, width)
    if short == scale:
        return height, width
    longer = int(scale * long / short)
    return (longer, scale) if width <= height else (scale, longer)


def _window_starts(length: int, step: int, window: int) -> list[int]:
    """Window starts every ``step``; the last one moved back so the window ends at the border."""
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def _chunks(total: int, per_pass: int, device: torch.device) -> Iterator[torch.Tensor]:
    for start in range(0, total, per_pass):
        yield torch.arange(start, min(start + per_pass, total), device=device)


def _base_class(base: Any) -> type[Explainer]:
    if isinstance(base, str):
        name = base.strip().lower()
        if name not in METHODS or name == "sess":
            raise CamkitError(
                f"Unknown base method {base!r}; choose one of {', '.join(n for n in METHODS if n != 'sess')}."
            )
        return METHODS[name]
    if isinstance(base, type) and issubclass(base, Explainer) and not issubclass(base, SESS):
        return base
    raise CamkitTypeError(f"base must be a method's name (e.g. 'gradcam') or its class (camkit.GradCAM), got {base!r}.")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CamkitError(f"{name} must be a positive int, got {value!r}.")
    return value


def _checked_scales(scales: Sequence[int] | None) -> list[int] | None:
    if scales is None:
        return None
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise CamkitTypeError(f"scales must be a non-empty list of sizes in pixels, got {scales!r}.")
    return [_positive_int("every scale", scale) for scale in scales]


__all__ = ["SESS", "gaussian_blur"]
