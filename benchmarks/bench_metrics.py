"""Localisation and Quantus-family metrics side by side with their reference implementations, one process.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/bench_metrics.py --images 16 --side 112 --rounds 3

MaxBoxAccV2 and PxAP: camkit against a loop written as Choe et al.'s code runs
(tests/helpers.py: one map and one CAM threshold at a time, OpenCV contours,
numpy IoU and histograms), on CAM-like maps (a 7x7 random field upsampled)
with one to three boxes per image, 100 CAM thresholds. camkit's CPU path uses
OpenCV's contours too; ``torch`` labels every threshold of the batch at once
(the accelerator path, timed here on the CPU for completeness).
Quantus: each metric on the same batch, camkit's function against Quantus
0.6's metric object (its own batching and preprocessing included). Every
pair is checked to agree before it is timed; the median of ``--rounds`` is shown.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from camkit import metrics
from tests.helpers import blob_maps, random_boxes, wsol_max_box_accuracy, wsol_pxap


def timed(function: Callable[[], object], rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        began = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def row(name: str, ours: float, theirs: float, agree: str) -> str:
    return f"| {name} | {ours * 1000:.1f} | {theirs * 1000:.1f} | {theirs / ours:.1f}x | {agree} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--side", type=int, default=112)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-torch", action="store_true", help="leave out the torch labelling path (slow on CPU)")
    parser.add_argument("--gradient-noise", type=float, nargs="*", default=None, metavar="SIGMA",
                        help="instead: gradient-noise stability of every gradient method on the demo set at these "
                        "sigmas (CF-CAM's robustness claim)")
    parser.add_argument("--methods", default="gradcam,gradcam++,xgradcam,hirescam,layercam,eigengradcam,cfcam")
    parser.add_argument("--layer", default=None, help="the layer explained in the gradient-noise table (default: auto)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.gradient_noise is not None:
        gradient_noise_table(args.images, args.gradient_noise, args.methods.split(","), args.layer)
        return
    maps = blob_maps(args.images, args.side, seed=0)
    boxes = random_boxes(args.images, args.side, seed=1)
    masks = blob_maps(args.images, args.side, seed=2) > 0.6
    thresholds = np.arange(0, 1, 0.01)
    numpy_maps = [m.double().numpy() for m in maps]
    print(f"{args.images} maps of {args.side}x{args.side}, {args.threads} thread(s), median of {args.rounds}\n")
    print("| metric | camkit ms | reference ms | speed-up | agree |")
    print("|---|---|---|---|---|")

    reference_time, reference = timed(lambda: wsol_max_box_accuracy(numpy_maps, [b.numpy() for b in boxes],
                                                                     thresholds), args.rounds)
    backends = ["opencv"] + ([] if args.skip_torch else ["torch"])
    for backend in backends:
        ours_time, ours = timed(lambda backend=backend: metrics.max_box_accuracy(maps, boxes, backend=backend),
                                args.rounds)
        same = [float(ours[key]) for key in ("iou_0.3", "iou_0.5", "iou_0.7")] == reference
        print(row(f"MaxBoxAccV2 ({backend})", ours_time, reference_time, "yes" if same else f"NO {ours} {reference}"))
    reference_time, reference = timed(lambda: wsol_pxap(numpy_maps, [m.numpy() for m in masks], thresholds),
                                      args.rounds)
    ours_time, ours = timed(lambda: metrics.pixel_average_precision(maps, masks), args.rounds)
    print(row("PxAP", ours_time, reference_time, "yes" if abs(float(ours) - reference) < 1e-9 else "NO"))

    import quantus

    x = np.random.default_rng(0).random((args.images, 3, args.side, args.side)).astype(np.float32)
    a, s = maps[:, None].numpy(), masks[:, None].numpy().astype(float)
    cases = [
        ("Sparseness", quantus.Sparseness, lambda: metrics.sparseness(maps)),
        ("Complexity", quantus.Complexity, lambda: metrics.complexity(maps)),
        ("RelevanceMassAccuracy", quantus.RelevanceMassAccuracy, lambda: metrics.relevance_mass_accuracy(maps, masks)),
        ("RelevanceRankAccuracy", quantus.RelevanceRankAccuracy, lambda: metrics.relevance_rank_accuracy(maps, masks)),
        ("AttributionLocalisation", quantus.AttributionLocalisation,
         lambda: metrics.attribution_localisation(maps, masks)),
        ("TopKIntersection", quantus.TopKIntersection, lambda: metrics.top_k_intersection(maps, masks)),
    ]
    for name, make, ours_call in cases:
        metric = make(disable_warnings=True)

        def theirs(metric=metric) -> np.ndarray:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(args.images, dtype=int),
                                         a_batch=a.copy(), s_batch=s, batch_size=args.images))
        reference_time, reference = timed(theirs, args.rounds)
        ours_time, ours = timed(ours_call, args.rounds)
        same = np.allclose(ours.numpy(), reference, atol=1e-4, equal_nan=True)
        print(row(name, ours_time, reference_time, "yes" if same else "NO"))


def gradient_noise_table(images: int, sigmas: list[float], names: list[str], layer: str | None) -> None:
    """Spearman / SSIM between each method's map and its maps under gradient noise, on held-out demo images."""
    import camkit
    from camkit.app.demo import demo_preprocess, load_demo_model, make_demo_dataset

    model = load_demo_model()
    x = demo_preprocess(make_demo_dataset(images, seed=1, split="test")[0])
    print(f"{images} demo images, 4 noisy copies each; Spearman / SSIM (1 = unchanged)\n")
    print("| method | " + " | ".join(f"sigma {sigma:g}" for sigma in sigmas) + " |")
    print("|---|" + "---|" * len(sigmas))
    for name in names:
        explainer = camkit.create(name, model, layer)
        cells = []
        for sigma in sigmas:
            result = metrics.gradient_noise_stability(explainer, x, sigma=sigma, samples=4, seed=0)
            cells.append(f"{float(result['spearman'].mean()):.3f} / {float(result['ssim'].mean()):.3f}")
        print(f"| {name} ({explainer.target_layer_name}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
