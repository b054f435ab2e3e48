"""Weakly-supervised localisation as the papers score it: boxes around thresholded maps, MaxBoxAccV2, PxAP.

Definitions follow Choe et al., "Evaluating Weakly Supervised Object
Localization Methods Right", CVPR 2020 (arXiv:2001.07437) and the authors'
code (github clovaai/wsolevaluation), number for number:

- a map is quantised to ``uint8(map * 255)``; at a CAM threshold ``t`` the
  foreground is ``q > int(t * max q)``;
- the boxes are those of OpenCV's contours (``RETR_TREE``): one per
  8-connected foreground region, plus one per hole (a 4-connected background
  region not touching the border, its box grown by one pixel, as the hole's
  border runs on the foreground around it); ``x1 = x + w`` and
  ``y1 = y + h``, clipped to ``W - 1`` and ``H - 1``; no foreground gives the
  box ``(0, 0, 0, 0)``. With ``multi_contour=False`` only the contour of
  largest polygon area (OpenCV's ``contourArea``) is kept;
- IoU counts pixels inclusively (``(x1 - x0 + 1) * (y1 - y0 + 1)``), and
  0 where the union is empty;
- accuracies and PxAP are in percent.

Boxes are given per image as ``(x0, y0, x1, y1)``: a ``(B, 4)`` tensor, a
``(B, G, 4)`` tensor whose rows of -1 pad images with fewer boxes, or a
list of ``(G_i, 4)`` tensors.

The components are found in torch (:mod:`camkit.ops.components`) on an
accelerator, and by OpenCV's ``findContours`` for maps on the CPU:
measured on 224 x 224 maps, the torch labelling costs tens of milliseconds
per mask on a CPU core against OpenCV's 0.3 ms, while on a GPU it labels all
thresholds of a batch at once. Both give the same boxes (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CamkitError, CamkitTypeError
from ..ops.components import connected_components

BoxesSpec = torch.Tensor | Sequence[torch.Tensor]
ThresholdsSpec = Sequence[float] | torch.Tensor | None
IOU_THRESHOLDS = (0.3, 0.5, 0.7)
BACKENDS = ("auto", "torch", "opencv")
# Masks labelled at once by the torch backend: bounds memory to a few hundred MB.
_PIXELS_PER_PASS = 1 << 23


def cam_thresholds(step: float = 0.01) -> torch.Tensor:
    """The CAM thresholds 0, step, 2 step, ... below 1 in float64, as ``np.arange(0, 1, step)`` (the authors' list)."""
    if not 0 < step < 1:
        raise CamkitError(f"the CAM threshold step must lie in (0, 1), got {step}.")
    count = int(torch.ceil(torch.tensor(1.0 / step, dtype=torch.float64)))
    return torch.arange(count, dtype=torch.float64) * step


def boxes_from_maps(
    maps: torch.Tensor, threshold: float, multi_contour: bool = False, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes around each map's regions above ``threshold`` times its maximum.

    Returns ``boxes`` ``(B, N, 4)`` long ``(x0, y0, x1, y1)`` and ``valid``
    ``(B, N)`` bool (rows past an image's count are padding). With
    ``multi_contour=False`` N is 1: the box of the largest contour. ``backend``
    is ``'auto'`` (OpenCV for CPU maps, torch otherwise), ``'torch'`` or ``'opencv'``.
    """
    _check_maps(maps)
    masks = foreground(maps, torch.tensor([float(threshold)], dtype=torch.float64))[:, 0]
    return _mask_boxes(masks, multi_contour, _backend(backend, maps))


def foreground(maps: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``(B, T, H, W)`` bool: the authors' binarisation ``uint8(map * 255) > int(t * max)`` at each threshold."""
    quantised = (maps.double() * 255).floor()
    levels = (thresholds.to(maps.device, torch.float64)[None] * quantised.flatten(1).amax(dim=1)[:, None]).floor()
    return quantised[:, None] > levels[:, :, None, None]


def box_iou(boxes: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU of ``(..., N, 4)`` boxes with ``(..., G, 4)`` boxes, ``(..., N, G)`` float64, pixels counted inclusively."""
    boxes, truth = boxes.double()[..., :, None, :], truth.double()[..., None, :, :]
    low = torch.maximum(boxes[..., :2], truth[..., :2])
    high = torch.minimum(boxes[..., 2:], truth[..., 2:])
    intersection = (high - low + 1).clamp_min(0).prod(dim=-1)
    union = (
        (boxes[..., 2:] - boxes[..., :2] + 1).prod(dim=-1)
        + (truth[..., 2:] - truth[..., :2] + 1).prod(dim=-1)
        - intersection
    )
    return torch.where(union > 0, intersection / torch.where(union > 0, union, 1.0), 0.0)


def localisation_accuracy(
    maps: torch.Tensor,
    boxes: BoxesSpec,
    predictions: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    threshold: float = 0.15,
    iou: float = 0.5,
    multi_contour: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Top-1 localisation, one 0/1 value per image: the class is right and a box hits a true box with IoU >= ``iou``.

    The box is the largest region's above ``threshold`` of the map's maximum
    (15 % in the Grad-CAM paper); without ``predictions`` and ``labels`` only
    the box counts (GT-known localisation). ``1 - mean`` is the localisation
    error the Grad-CAM and Eigen-CAM papers report.
    """
    _check_maps(maps)
    truth, present = ground_truth_boxes(boxes, maps.shape[0], maps.device)
    found, valid = boxes_from_maps(maps, threshold, multi_contour, backend=backend)
    overlap = box_iou(found, truth).masked_fill(~valid[:, :, None], -1).masked_fill(~present[:, None], -1)
    hit = overlap.flatten(1).amax(dim=1) >= iou
    if (predictions is None) != (labels is None):
        raise CamkitError("give both predictions and labels (top-1 localisation), or neither (GT-known).")
    if predictions is not None and labels is not None:
        hit &= torch.as_tensor(predictions, device=maps.device) == torch.as_tensor(labels, device=maps.device)
    return hit.float()


def box_accuracy_counts(
    maps: torch.Tensor,
    boxes: BoxesSpec,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    thresholds: ThresholdsSpec = None,
    multi_contour: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """``(I, T)`` counts of images whose best box at CAM threshold t reaches IoU threshold i: MaxBoxAcc's numerators."""
    return box_accuracy_hits(maps, boxes, iou_thresholds, thresholds, multi_contour, backend).sum(dim=0)


def box_accuracy_hits(
    maps: torch.Tensor,
    boxes: BoxesSpec,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    thresholds: ThresholdsSpec = None,
    multi_contour: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """``(B, I, T)`` bool per image: its best box at CAM threshold t reaches IoU threshold i (summed: the counts)."""
    _check_maps(maps)
    levels = _thresholds(thresholds)
    truth, present = ground_truth_boxes(boxes, maps.shape[0], maps.device)
    if _backend(backend, maps) == "opencv":
        best = _opencv_best_iou(maps, levels, truth, present, multi_contour)
    else:
        best = _torch_best_iou(maps, levels, truth, present, multi_contour)
    limits = torch.tensor([float(value) for value in iou_thresholds], dtype=torch.float64, device=maps.device)
    return best[:, None] >= limits[None, :, None]


def max_box_accuracy(
    maps: torch.Tensor,
    boxes: BoxesSpec,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    thresholds: ThresholdsSpec = None,
    multi_contour: bool = True,
    backend: str = "auto",
) -> dict[str, torch.Tensor]:
    """MaxBoxAccV2 (Choe et al.): per IoU threshold, the box accuracy at the best CAM threshold, in percent.

    Keys ``iou_0.3``, ``iou_0.5``, ``iou_0.7`` (one per ``iou_thresholds``)
    and ``mean``, the MaxBoxAccV2 the paper reports. ``thresholds`` default to
    0, 0.01, ..., 0.99; ``multi_contour=True`` scores every region's box (V2);
    False the largest region's only (the original MaxBoxAcc at IoU 0.5).
    Defined over a data set: give all images at once, or use
    :class:`camkit.metrics.RunningMaxBoxAccuracy` over batches.
    """
    counts = box_accuracy_counts(maps, boxes, iou_thresholds, thresholds, multi_contour, backend)
    return max_box_summary(counts, maps.shape[0], iou_thresholds)


def max_box_summary(counts: torch.Tensor, images: int, iou_thresholds: Sequence[float]) -> dict[str, torch.Tensor]:
    """MaxBoxAcc per IoU threshold and their mean, from :func:`box_accuracy_counts` summed over ``images`` images."""
    best = (counts.double() * 100.0 / images).amax(dim=1)
    summary = {f"iou_{value:g}": best[index] for index, value in enumerate(iou_thresholds)}
    summary["mean"] = best.mean()
    return summary


def pixel_score_histograms(
    maps: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor | None = None, thresholds: ThresholdsSpec = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histograms (float64) of map values on object pixels and on background pixels, bins [t_i, t_i+1) as the authors'.

    The bin edges are the thresholds followed by 1, 2 and 3 (the last bin closed).
    Pixels where ``ignore`` is set count in neither.
    """
    _check_maps(maps)
    if masks.shape != maps.shape or masks.dtype != torch.bool:
        raise CamkitError(
            f"masks must be bool of the maps' shape {tuple(maps.shape)}, got {masks.dtype} "
            f"{tuple(masks.shape)}; use masks > 0."
        )
    if ignore is not None and (ignore.shape != maps.shape or ignore.dtype != torch.bool):
        raise CamkitError(
            f"ignore must be bool of the maps' shape {tuple(maps.shape)}, got {ignore.dtype} {tuple(ignore.shape)}."
        )
    levels = _thresholds(thresholds)
    edges = torch.cat((levels, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))).to(maps.device)
    bins = edges.numel() - 1
    if maps.device.type == "cpu" and maps.dtype == torch.float32:
        return _float32_histograms(maps, masks, ignore, edges)
    index = _bin_index(maps.double(), edges, levels)
    kind = masks.long() if ignore is None else torch.where(ignore, 2, masks.long())
    counts = torch.bincount((index + bins * kind).flatten(), minlength=3 * bins).double()
    return counts[bins : 2 * bins], counts[:bins]


def _float32_histograms(
    maps: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor | None, edges: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two histograms of float32 CPU maps, as ``np.histogram`` counts them, without a float64 copy.

    A float32 value v lies at or above a float64 edge e exactly when v >= the
    smallest float32 >= e. Each group's values are sorted (numpy's vectorised
    float32 sort) and the edges searched in them: a few searches instead of
    one per pixel.
    """
    table = edges.numpy().astype(np.float32)
    below = table.astype(np.float64) < edges.numpy()
    table[below] = np.nextafter(table[below], np.float32(np.inf))
    values = maps.detach().numpy().reshape(-1)
    inside = masks.numpy().reshape(-1)
    outside = ~inside
    if ignore is not None:
        kept = ~ignore.numpy().reshape(-1)
        inside, outside = inside & kept, outside & kept

    def histogram(chosen: np.ndarray) -> torch.Tensor:
        ordered = np.sort(values[chosen])
        below_edge = np.searchsorted(ordered, table, side="left")
        below_edge[-1] = np.searchsorted(ordered, table[-1], side="right")  # the last bin is closed
        return torch.from_numpy(np.diff(below_edge).astype(np.float64))

    return histogram(inside), histogram(outside)


def _bin_index(values: torch.Tensor, edges: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Each value's bin, edges[i] <= v < edges[i + 1] (the last bin closed), as ``np.histogram`` counts.

    For evenly spaced thresholds from 0 (the default) the bin is read off
    ``v / step`` and corrected by one comparison each way against the exact
    float64 edges, faster than torch's binary search on the CPU; otherwise a
    binary search. Values lie in [0, 1].
    """
    bins = edges.numel() - 1
    count = levels.numel()
    step = float(levels[1] - levels[0]) if count > 1 else 0.0
    if count < 2 or levels[0] != 0 or not torch.equal(levels, torch.arange(count, dtype=torch.float64) * step):
        return (torch.bucketize(values, edges, right=True) - 1).clamp_max(bins - 1)
    guess = (values / step).floor().clamp(0, count - 1)
    # The edges are i * step, the same float64 product the thresholds hold, so no table look-up is needed.
    guess = guess - (values < guess * step).double()
    upper = torch.where(guess + 1 >= count, 1.0, (guess + 1) * step)
    guess = guess + (values >= upper).double()
    return torch.where(values >= 1, count, guess.long())


def average_precision_of(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """PxAP in percent from the two pixel-score histograms: area under the precision-recall curve, as the authors'."""
    true_positives = positive.flip(0).cumsum(0)
    false_positives = negative.flip(0).cumsum(0)
    if positive.sum() <= 0:
        raise CamkitError("PxAP needs object pixels: every mask is empty.")
    predicted = true_positives + false_positives
    precision = true_positives / predicted.clamp_min(1)
    recall = true_positives / positive.sum()
    steps = (precision[1:] * recall.diff())[predicted[1:] != 0]
    return steps.sum() * 100


def pixel_average_precision(
    maps: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor | None = None, thresholds: ThresholdsSpec = None
) -> torch.Tensor:
    """PxAP (Choe et al.): average precision of pixels ranked by the map against the masks, over the set, in percent.

    One value for all images given (pixels pooled); over batches use
    :class:`camkit.metrics.RunningPixelAveragePrecision`.
    """
    return average_precision_of(*pixel_score_histograms(maps, masks, ignore, thresholds))


def ground_truth_boxes(boxes: BoxesSpec, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, G, 4)`` float64 boxes and ``(B, G)`` bool presence from any accepted layout (see the module's doc)."""
    if isinstance(boxes, torch.Tensor):
        table = boxes[:, None] if boxes.dim() == 2 else boxes
    elif isinstance(boxes, Sequence) and all(isinstance(item, torch.Tensor) for item in boxes):
        most = max((item.reshape(-1, 4).shape[0] for item in boxes), default=0)
        table = torch.full((len(boxes), max(most, 1), 4), -1.0, dtype=torch.float64)
        for row, item in enumerate(boxes):
            table[row, : item.reshape(-1, 4).shape[0]] = item.reshape(-1, 4).double().cpu()
    else:
        raise CamkitTypeError(f"boxes must be a tensor or a list of tensors, got {type(boxes).__name__}.")
    if table.dim() != 3 or table.shape[-1] != 4 or table.shape[0] != batch:
        raise CamkitError(
            f"boxes must be (B, 4), (B, G, 4) or B tensors of (G, 4) with B = {batch}, got {tuple(table.shape)}."
        )
    table = table.to(device, torch.float64)
    return table, ~(table == -1).all(dim=-1)


def _check_maps(maps: torch.Tensor) -> None:
    if maps.dim() != 3:
        raise CamkitError(f"maps must have shape (B, H, W), got {tuple(maps.shape)}.")
    if maps.numel() and (torch.isnan(maps).any() or maps.amin() < 0 or maps.amax() > 1):
        raise CamkitError("maps must lie in [0, 1] without NaN, as camkit's explainers return them.")


def _thresholds(thresholds: ThresholdsSpec) -> torch.Tensor:
    if thresholds is None:
        return cam_thresholds(0.01)
    return torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1).cpu()


def _backend(backend: str, maps: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise CamkitError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}.")
    if backend == "auto":
        return "opencv" if maps.device.type == "cpu" else "torch"
    return backend


def _torch_best_iou(
    maps: torch.Tensor, levels: torch.Tensor, truth: torch.Tensor, present: torch.Tensor, multi_contour: bool
) -> torch.Tensor:
    """``(B, T)`` best IoU of any box at each CAM threshold, every threshold of a chunk labelled at once."""
    best = torch.empty(maps.shape[0], levels.numel(), dtype=torch.float64, device=maps.device)
    step = max(1, _PIXELS_PER_PASS // (maps.shape[0] * maps.shape[1] * maps.shape[2]))
    for start in range(0, levels.numel(), step):
        masks = foreground(maps, levels[start : start + step])
        found, valid = _mask_boxes(masks.flatten(0, 1), multi_contour, "torch")
        overlap = box_iou(found.reshape(*masks.shape[:2], -1, 4), truth[:, None])  # (B, t, N, G)
        overlap = overlap.masked_fill(~valid.reshape(*masks.shape[:2], -1)[..., None], -1)
        best[:, start : start + masks.shape[1]] = overlap.masked_fill(~present[:, None, None], -1).flatten(2).amax(2)
    return best


def _opencv_best_iou(
    maps: torch.Tensor, levels: torch.Tensor, truth: torch.Tensor, present: torch.Tensor, multi_contour: bool
) -> torch.Tensor:
    """``(B, T)`` best IoU at each CAM threshold: OpenCV's contours per mask, the IoUs of all their boxes at once."""
    boxes, owner = _opencv_level_rectangles(maps, levels, multi_contour)
    image = owner // levels.numel()
    overlap = box_iou(boxes[:, None], truth[image])[:, 0].masked_fill(~present[image], -1).amax(dim=1)
    best = torch.full((maps.shape[0] * levels.numel(),), -1.0, dtype=torch.float64, device=maps.device)
    return best.scatter_reduce(0, owner, overlap, reduce="amax").reshape(maps.shape[0], levels.numel())


def _opencv_level_rectangles(
    maps: torch.Tensor, levels: torch.Tensor, multi_contour: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every contour's box at every (image, CAM threshold), owner ``image * T + t``, as :func:`_opencv_rectangles`.

    Each mask is traced only inside its foreground's box plus a one-pixel
    margin (found from the rows' and columns' maxima, for all thresholds at
    once): the contours there are the whole mask's, shifted, and OpenCV's cost
    grows with the area it scans. The masks are those of :func:`foreground`.
    """
    import cv2  # a core dependency; only the CPU path needs it

    height, width = maps.shape[1:]
    quantised = (maps.double() * 255).floor()
    cuts = (levels.to(torch.float64)[None] * quantised.flatten(1).amax(dim=1)[:, None]).floor().cpu()
    pixels = quantised.to(torch.uint8).cpu()
    rows = _foreground_span(pixels.amax(dim=2), cuts)  # (B, T, 2): first and last row above each cut
    columns = _foreground_span(pixels.amax(dim=1), cuts)
    pixels_np, steps = pixels.numpy(), levels.numel()
    spans = list(zip(cuts.tolist(), rows.tolist(), columns.tolist()))

    def traced(images: range) -> tuple[list[tuple[int, int, int, int]], list[int]]:
        rects: list[tuple[int, int, int, int]] = []
        owners: list[int] = []
        for image in images:
            cut_row, row_span, column_span = spans[image]
            for step, (cut, (first_row, last_row), (first_column, last_column)) in enumerate(
                zip(cut_row, row_span, column_span)
            ):
                owner = image * steps + step
                if first_row < 0:
                    rects.append((0, 0, 0, 0))  # no foreground: the authors' empty box
                    owners.append(owner)
                    continue
                top, left = max(first_row - 1, 0), max(first_column - 1, 0)
                crop = pixels_np[image, top : min(last_row + 2, height), left : min(last_column + 2, width)]
                # uint8 > an integer cut, in C (a float threshold on uint8 acts as its floor, and the cut is whole).
                mask = cv2.threshold(crop, cut, 1, cv2.THRESH_BINARY)[1]
                contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
                if not multi_contour:
                    contours = (max(contours, key=cv2.contourArea),)
                for contour in contours:
                    x, y, w, h = cv2.boundingRect(contour)
                    rects.append((x + left, y + top, w, h))
                    owners.append(owner)
        return rects, owners

    # OpenCV releases the GIL while it traces: the images are split over torch's thread budget.
    workers = max(1, min(torch.get_num_threads(), len(spans)))
    parts = [range(start, len(spans), workers) for start in range(workers)]
    if workers == 1:
        found = [traced(parts[0])]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="camkit-contours") as pool:
            found = list(pool.map(traced, parts))
    rects = [rect for part_rects, _ in found for rect in part_rects]
    owners = [owner for _, part_owners in found for owner in part_owners]
    return _clipped_boxes(rects, owners, (height, width), maps.device)


def _foreground_span(peaks: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """``(B, T, 2)``: the first and last index whose peak (a row's or column's maximum) is above each cut; -1 if none."""
    above = peaks[:, :, None].long() > cuts[:, None, :].long()  # (B, L, T)
    count = above.shape[1]
    first = torch.where(above.any(dim=1), above.long().argmax(dim=1), -1)
    last = torch.where(above.any(dim=1), count - 1 - above.flip(1).long().argmax(dim=1), -1)
    return torch.stack((first, last), dim=-1)


def _opencv_rectangles(masks: torch.Tensor, multi_contour: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every contour's box ``(M, 4)`` (clipped as the authors') and the mask it belongs to ``(M,)``.

    A mask without contours gets the box (0, 0, 0, 0), as in the authors' code.
    """
    import cv2  # a core dependency; only the CPU path needs it

    height, width = masks.shape[1:]
    rects: list[Sequence[int]] = []  # (x, y, w, h) each
    owners: list[int] = []
    for owner, mask in enumerate(masks.cpu().numpy().view("uint8")):  # findContours reads non-zero as foreground
        contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        if contours and not multi_contour:
            contours = (max(contours, key=cv2.contourArea),)
        found = [cv2.boundingRect(contour) for contour in contours] or [(0, 0, 0, 0)]
        rects += found
        owners += [owner] * len(found)
    return _clipped_boxes(rects, owners, (height, width), masks.device)


def _clipped_boxes(
    rects: Sequence[Sequence[int]], owners: Sequence[int], size: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's (x, y, w, h) rectangles as the authors' boxes (x0, y0, x0 + w, y0 + h, clipped to the last
    pixel) ``(M, 4)``, with the mask each belongs to ``(M,)``."""
    height, width = size
    table = torch.tensor(rects, dtype=torch.long, device=device).reshape(-1, 4)
    boxes = torch.stack(
        (
            table[:, 0],
            table[:, 1],
            (table[:, 0] + table[:, 2]).clamp_max(width - 1),
            (table[:, 1] + table[:, 3]).clamp_max(height - 1),
        ),
        dim=1,
    )
    return boxes, torch.tensor(owners, dtype=torch.long, device=device)


def _mask_boxes(masks: torch.Tensor, multi_contour: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, H, W)`` bool masks to padded ``(N, K, 4)`` boxes and ``(N, K)`` validity."""
    if backend == "opencv":
        return _opencv_boxes(masks, multi_contour)
    height, width = masks.shape[1:]
    foreground_labels = connected_components(masks, 8)
    background_labels = connected_components(~masks, 4)
    holes = ~_touches_border(background_labels, height, width)
    if multi_contour:
        regions = _region_boxes(foreground_labels, height, width)
        hole_boxes = _region_boxes(background_labels, height, width, grow=1, keep=holes)
        boxes = torch.cat((regions[0], hole_boxes[0]), dim=1)
        valid = torch.cat((regions[1], hole_boxes[1]), dim=1)
    else:
        boxes, valid = _largest_contour_box(masks, background_labels, holes, height, width)
    return _compact(boxes, valid, height, width)


def _touches_border(labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, H * W + 1)`` bool: whether the component rooted at each index has a pixel on the image's border."""
    border = torch.zeros(height, width, dtype=torch.bool, device=labels.device)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    flags = torch.zeros(labels.shape[0], height * width + 1, dtype=torch.long, device=labels.device)
    return flags.scatter_reduce(1, labels, border.flatten().long().expand_as(labels), reduce="amax").bool()


def _region_boxes(
    labels: torch.Tensor, height: int, width: int, grow: int = 0, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of every component, indexed by its root: ``(N, H * W, 4)`` and which roots are components (kept)."""
    pixels = height * width
    index = torch.arange(pixels, device=labels.device)
    coordinates = (index % width, index // width)
    corners = []
    for values in coordinates:
        values = values.expand_as(labels)
        low = torch.full((labels.shape[0], pixels + 1), pixels, dtype=torch.long, device=labels.device)
        high = torch.full_like(low, -1)
        corners.append(
            (
                low.scatter_reduce(1, labels, values, reduce="amin")[:, :pixels],
                high.scatter_reduce(1, labels, values, reduce="amax")[:, :pixels],
            )
        )
    (x_low, x_high), (y_low, y_high) = corners
    boxes = torch.stack((x_low - grow, y_low - grow, x_high + 1 + grow, y_high + 1 + grow), dim=-1)
    roots = labels == index
    if keep is not None:
        roots &= keep[:, :pixels]
    return boxes, roots


def _largest_contour_box(
    masks: torch.Tensor, background_labels: torch.Tensor, holes: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The box of the outer contour of largest polygon area; ties go to the region a row-major scan meets last.

    The outer contour of a top-level region R (a region with its holes filled:
    an 8-connected component of everything but the outside background) runs
    through the centres of R's border pixels, so its area counts every 2 x 2
    block of pixel centres: 1 when all four lie in R, 1/2 (the triangle cut off
    by the diagonal step) when three do. A nested region is inside a hole of
    its parent, so its contour is never the largest. OpenCV lists sibling
    contours newest first, and ``max`` keeps the first of equals.
    """
    pixels = height * width
    inside = masks | holes.gather(1, background_labels).reshape(masks.shape)  # all but the outside background
    regions = connected_components(inside, 8)
    block = F.avg_pool2d(inside[:, None].double(), kernel_size=2, stride=1)[:, 0] * 4  # pixels of R per 2x2 block
    area = torch.where(block == 4, 1.0, torch.where(block == 3, 0.5, 0.0)).flatten(1).double()
    block_region = -F.max_pool2d(-regions.reshape(masks.shape)[:, None].double(), kernel_size=2, stride=1)[:, 0]
    areas = torch.zeros(masks.shape[0], pixels + 1, dtype=torch.float64, device=masks.device)
    areas = areas.scatter_add(1, block_region.flatten(1).long(), area)[:, :pixels]
    boxes, roots = _region_boxes(regions, height, width)
    # Largest area first (areas are multiples of 1/2), then the largest root index (the region met last by a scan).
    rank = torch.where(roots, areas * 2 * (pixels + 1) + torch.arange(pixels, device=masks.device), -1.0)
    best = rank.argmax(dim=1)
    return boxes.gather(1, best[:, None, None].expand(-1, 1, 4)), roots.gather(1, best[:, None])


def _compact(boxes: torch.Tensor, valid: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid boxes moved to the front of each row, clipped as the authors'; an image without any gets (0, 0, 0, 0)."""
    count = valid.sum(dim=1)
    slots = max(int(count.max()) if count.numel() else 0, 1)
    position = valid.long().cumsum(dim=1) - 1
    rows = torch.arange(valid.shape[0], device=valid.device)[:, None].expand_as(valid)
    packed = torch.zeros(valid.shape[0], slots, 4, dtype=torch.long, device=valid.device)
    packed[rows[valid], position[valid]] = boxes[valid]
    packed[..., 2].clamp_(max=width - 1)
    packed[..., 3].clamp_(max=height - 1)
    packed[..., :2].clamp_(min=0)
    present = torch.arange(slots, device=valid.device)[None] < count[:, None]
    present[:, 0] = True  # the (0, 0, 0, 0) box of an empty mask counts, as in the authors' code
    return packed, present


def _opencv_boxes(masks: torch.Tensor, multi_contour: bool) -> tuple[torch.Tensor, torch.Tensor]:
    boxes, owner = _opencv_rectangles(masks, multi_contour)
    first = torch.searchsorted(owner, torch.arange(masks.shape[0], device=owner.device))
    slot = torch.arange(owner.numel(), device=owner.device) - first[owner]
    slots = int(slot.max()) + 1 if slot.numel() else 1
    packed = torch.zeros(masks.shape[0], slots, 4, dtype=torch.long, device=masks.device)
    valid = torch.zeros(masks.shape[0], slots, dtype=torch.bool, device=masks.device)
    packed[owner, slot] = boxes
    valid[owner, slot] = True
    return packed, valid
