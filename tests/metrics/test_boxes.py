"""Box localisation, MaxBoxAccV2 and PxAP against Choe et al.'s definitions (tests/helpers.py: OpenCV, numpy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from camkit import CamkitError, metrics
from camkit.metrics import boxes as box_metrics

from ..helpers import blob_maps, random_boxes, wsol_boxes, wsol_iou, wsol_max_box_accuracy, wsol_pxap


def _random_maps(count: int, side: int, seed: int) -> torch.Tensor:
    """Blob maps at several scales plus speckle: many regions, holes, diagonal joins and ties."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.cat([blob_maps(count, side, seed, coarse) for coarse in (3, 5, 9)])
    speckle = torch.rand(count, side, side, generator=generator)
    speckle = speckle / speckle.amax(dim=(1, 2), keepdim=True)
    return torch.cat((maps, speckle))


@pytest.mark.parametrize("backend", ["torch", "opencv"])
@pytest.mark.parametrize("multi_contour", [True, False])
def test_boxes_equal_opencv_contours(backend: str, multi_contour: bool) -> None:
    maps = _random_maps(4, 23, seed=3)
    for threshold in (0.0, 0.2, 0.45, 0.7, 0.95):
        boxes, valid = metrics.boxes_from_maps(maps, threshold, multi_contour, backend=backend)
        for image in range(maps.shape[0]):
            ours = sorted(map(tuple, boxes[image][valid[image]].tolist()))
            reference = sorted(wsol_boxes(maps[image].double().numpy(), threshold, multi_contour))
            assert ours == reference, (threshold, image)


def test_torch_and_opencv_boxes_of_a_ring_and_ties() -> None:
    maps = torch.zeros(1, 9, 9)
    maps[0, 1:8, 1:8] = 1.0
    maps[0, 3:6, 3:6] = 0.0  # a hole: its contour's box is the hole grown by one pixel
    maps[0, 4, 4] = 1.0  # an island inside the hole
    for backend in ("torch", "opencv"):
        boxes, valid = metrics.boxes_from_maps(maps, 0.5, multi_contour=True, backend=backend)
        found = sorted(map(tuple, boxes[0][valid[0]].tolist()))
        assert found == sorted(wsol_boxes(maps[0].double().numpy(), 0.5, True))
        assert found == [(1, 1, 8, 8), (2, 2, 7, 7), (4, 4, 5, 5)]  # block, hole grown by one, island
    singles = torch.zeros(1, 6, 6)
    singles[0, 1, 4] = singles[0, 4, 1] = 1.0  # two contours of area 0: OpenCV keeps the one met last
    for backend in ("torch", "opencv"):
        assert metrics.boxes_from_maps(singles, 0.5, backend=backend)[0][0, 0].tolist() == [1, 4, 2, 5]
    empty = torch.zeros(2, 5, 5)
    for backend in ("torch", "opencv"):
        boxes, valid = metrics.boxes_from_maps(empty, 0.5, multi_contour=True, backend=backend)
        assert boxes.tolist() == [[[0, 0, 0, 0]]] * 2 and valid.all()


def test_default_thresholds_are_the_authors() -> None:
    assert torch.equal(box_metrics.cam_thresholds(0.01), torch.from_numpy(np.arange(0, 1, 0.01)))
    assert torch.equal(box_metrics.cam_thresholds(0.001), torch.from_numpy(np.arange(0, 1, 0.001)))


@pytest.mark.parametrize("backend", ["torch", "opencv"])
@pytest.mark.parametrize("multi_contour", [True, False])
def test_max_box_accuracy_equals_the_authors(backend: str, multi_contour: bool) -> None:
    maps = _random_maps(2, 16, seed=5)
    truth = random_boxes(maps.shape[0], 16, seed=6)
    thresholds = np.arange(0, 1, 0.1)
    ours = metrics.max_box_accuracy(maps, truth, thresholds=thresholds, multi_contour=multi_contour, backend=backend)
    reference = wsol_max_box_accuracy([m.double().numpy() for m in maps], [t.numpy() for t in truth], thresholds,
                                      multi_contour=multi_contour)
    assert [float(ours[key]) for key in ("iou_0.3", "iou_0.5", "iou_0.7")] == pytest.approx(reference, abs=1e-9)
    assert float(ours["mean"]) == pytest.approx(sum(reference) / 3, abs=1e-9)


@pytest.mark.parametrize("multi_contour", [True, False])
def test_images_split_over_threads_give_the_one_thread_hits(multi_contour: bool) -> None:
    maps = blob_maps(5, 40, seed=11)
    truth = random_boxes(maps.shape[0], 40, seed=12)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = box_metrics.box_accuracy_hits(maps, truth, multi_contour=multi_contour, backend="opencv")
        torch.set_num_threads(3)
        split = box_metrics.box_accuracy_hits(maps, truth, multi_contour=multi_contour, backend="opencv")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, split)
    reference = wsol_max_box_accuracy([m.double().numpy() for m in maps], [t.numpy() for t in truth],
                                      np.arange(0, 1, 0.01), multi_contour=multi_contour)
    assert (alone.double().mean(dim=0).amax(dim=1) * 100).tolist() == pytest.approx(reference, abs=1e-9)


def test_running_max_box_accuracy_equals_one_call() -> None:
    maps = _random_maps(3, 16, seed=7)
    truth = random_boxes(maps.shape[0], 16, seed=8)
    running = metrics.RunningMaxBoxAccuracy(thresholds=np.arange(0, 1, 0.1))
    for start in range(0, maps.shape[0], 5):
        running.update(maps[start : start + 5], truth[start : start + 5])
    whole = metrics.max_box_accuracy(maps, truth, thresholds=np.arange(0, 1, 0.1))
    assert running.summary() == {key: float(value) for key, value in whole.items()}
    curve = running.curve()
    assert curve.shape == (3, 10) and torch.equal(curve.amax(dim=1), torch.stack([whole[k] for k in list(whole)[:3]]))


def test_box_layouts_and_iou() -> None:
    maps = torch.zeros(2, 8, 8)
    maps[:, 2:5, 2:6] = 1.0
    padded = torch.tensor([[[2, 2, 5, 4], [-1, -1, -1, -1]], [[0, 0, 1, 1], [2, 2, 5, 4]]])
    listed = [torch.tensor([[2, 2, 5, 4]]), torch.tensor([[0, 0, 1, 1], [2, 2, 5, 4]])]
    for boxes in (padded, listed):
        assert metrics.localisation_accuracy(maps, boxes).tolist() == [1.0, 1.0]
    assert metrics.localisation_accuracy(maps, padded, predictions=torch.tensor([1, 2]),
                                         labels=torch.tensor([1, 3])).tolist() == [1.0, 0.0]
    a, b = np.array([[0, 0, 3, 3], [5, 5, 4, 4]]), np.array([[2, 2, 5, 5]])
    torch.testing.assert_close(box_metrics.box_iou(torch.from_numpy(a), torch.from_numpy(b)),
                               torch.from_numpy(wsol_iou(a, b)))
    with pytest.raises(CamkitError, match="predictions and labels"):
        metrics.localisation_accuracy(maps, padded, predictions=torch.tensor([1, 2]))
    with pytest.raises(CamkitError, match=r"\[0, 1\]"):
        metrics.max_box_accuracy(maps * 2, padded)


def test_pixel_average_precision_equals_the_authors_and_runs_over_batches() -> None:
    maps = _random_maps(2, 16, seed=9)
    generator = torch.Generator().manual_seed(10)
    masks = blob_maps(maps.shape[0], 16, seed=11) > 0.6
    ignore = (torch.rand(maps.shape, generator=generator) > 0.9) & ~masks
    thresholds = np.arange(0, 1, 0.01)
    for skip in (None, ignore):
        reference = wsol_pxap([m.double().numpy() for m in maps], [m.numpy() for m in masks], thresholds,
                              None if skip is None else skip.numpy())
        assert float(metrics.pixel_average_precision(maps, masks, skip)) == pytest.approx(reference, abs=1e-9)
        running = metrics.RunningPixelAveragePrecision()
        for start in range(0, maps.shape[0], 3):
            running.update(maps[start : start + 3], masks[start : start + 3],
                           None if skip is None else skip[start : start + 3])
        assert running.summary() == float(metrics.pixel_average_precision(maps, masks, skip))
    # a perfect map ranks every object pixel first
    assert float(metrics.pixel_average_precision(masks.float(), masks)) == pytest.approx(100.0)


@pytest.mark.parametrize("step", [0.01, 0.001, 0.05, 0.3])
def test_histogram_bins_equal_a_binary_search_at_every_edge(step: float) -> None:
    levels = box_metrics.cam_thresholds(step)
    edges = torch.cat((levels, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))
    inner = edges[:-2]
    values = torch.cat((inner, torch.nextafter(inner, torch.tensor(2.0, dtype=torch.float64)),
                        torch.nextafter(inner, torch.tensor(-1.0, dtype=torch.float64)),
                        torch.nextafter(inner.float(), torch.tensor(2.0)).double(), torch.rand(2000).double()))
    values = values.clamp(0, 1)
    expected = (torch.bucketize(values, edges, right=True) - 1).clamp_max(edges.numel() - 2)
    assert torch.equal(box_metrics._bin_index(values, edges, levels), expected)


def test_float32_histograms_equal_the_float64_bins_at_every_edge() -> None:
    """The float32 fast path (numpy search over float32 edges) bins exactly as float64 against the float64 edges."""
    edges = box_metrics.cam_thresholds(0.01).float()
    near = torch.cat((edges, torch.nextafter(edges, torch.tensor(2.0)), torch.nextafter(edges, torch.tensor(-1.0))))
    values = torch.cat((near.clamp(0, 1), torch.tensor([1.0, 0.0]), torch.rand(300 - 2 - near.numel() % 300)))
    values = values[: values.numel() // 10 * 10].reshape(2, -1, 5)
    masks = torch.rand(values.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    ignore = torch.rand(values.shape, generator=torch.Generator().manual_seed(1)) > 0.8
    for skip in (None, ignore):
        fast = box_metrics.pixel_score_histograms(values, masks, skip)
        slow = box_metrics.pixel_score_histograms(values.double(), masks, skip)
        assert all(torch.equal(a, b) for a, b in zip(fast, slow))


def test_opencv_path_traces_each_mask_inside_its_foreground_box() -> None:
    """Small regions far from the border, and regions on it: the cropped tracing gives the authors' boxes."""
    maps = torch.zeros(3, 40, 48)
    maps[0, 10:14, 30:35] = 1.0
    maps[0, 12, 33] = 0.2  # a hole at high thresholds
    maps[1, 0:5, 0:3] = 0.8  # on the border
    maps[1, 35:40, 44:48] = 0.6
    maps[2] = blob_maps(1, 48, seed=12, coarse=9)[0, :40]
    truth = random_boxes(3, 40, seed=13)
    thresholds = np.arange(0, 1, 0.05)
    for multi_contour in (True, False):
        ours = metrics.max_box_accuracy(maps, truth, thresholds=thresholds, multi_contour=multi_contour,
                                        backend="opencv")
        reference = wsol_max_box_accuracy([m.double().numpy() for m in maps], [t.numpy() for t in truth],
                                          thresholds, multi_contour=multi_contour)
        assert [float(ours[key]) for key in ("iou_0.3", "iou_0.5", "iou_0.7")] == pytest.approx(reference, abs=1e-12)
        counts = box_metrics.box_accuracy_counts(maps, truth, thresholds=thresholds, multi_contour=multi_contour,
                                                 backend="opencv")
        assert torch.equal(counts, box_metrics.box_accuracy_counts(
            maps, truth, thresholds=thresholds, multi_contour=multi_contour, backend="torch"))
