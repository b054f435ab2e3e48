"""The pixel methods side by side with captum and pytorch-grad-cam, in one process, interleaved.

Each case times camkit and the peer alternately (``--repeats`` rounds after a
warm-up) and reports the medians and their ratio. resnet50 (random weights,
eval mode), batch 4, ImageNet-sized logits.

    python benchmarks/bench_pixel.py                    # 160 x 160, as the issue asks
    python benchmarks/bench_pixel.py --size 96 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torchvision

import camkit


def timed(pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]], repeats: int, only: str) -> None:
    words = [word.strip().lower() for word in only.split(",") if word.strip()]
    for name, (ours, theirs) in pairs.items():
        if words and not any(word in name.lower() for word in words):
            continue
        ours(), theirs()  # warm-up
        times: dict[str, list[float]] = {"camkit": [], "peer": []}
        for _ in range(repeats):
            for who, run in (("camkit", ours), ("peer", theirs)):
                start = time.perf_counter()
                run()
                times[who].append(time.perf_counter() - start)
        mine, peer = statistics.median(times["camkit"]), statistics.median(times["peer"])
        load = " / ".join(f"{value:.1f}" for value in os.getloadavg())
        print(f"| {name} | {mine:.3f} | {peer:.3f} | {mine / peer:.2f}x | {load} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50, help="Integrated Gradients' steps")
    parser.add_argument("--only", default="", help="comma-separated words; run the cases whose name holds one")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from captum.attr import GuidedBackprop, IntegratedGradients, Saliency
    from pytorch_grad_cam import FullGrad, GradCAM, GuidedBackpropReLUModel
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    classes = list(range(args.batch))
    targets = [ClassifierOutputTarget(c) for c in classes]

    def pgc_guided_gradcam() -> object:
        cam = GradCAM(model, [model.layer4])
        try:
            maps = cam(input_tensor=x, targets=targets)
        finally:
            cam.activations_and_grads.release()
        guided = GuidedBackpropReLUModel(model, device="cpu")
        result = np.stack([guided(x[i:i + 1].clone(), c).transpose(2, 0, 1) * maps[i] for i, c in enumerate(classes)])
        model.zero_grad(set_to_none=True)
        return result

    def pgc_fullgrad() -> object:
        peer = FullGrad(model, [])
        try:
            return peer(input_tensor=x, targets=targets)
        finally:
            peer.activations_and_grads.release()
            model.zero_grad(set_to_none=True)

    print(f"resnet50, batch {args.batch}, {args.size}x{args.size}, CPU, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print("| case | camkit s | peer s | camkit / peer | load average after (1/5/15 min) |\n|---|---|---|---|---|")
    timed({
        "guided backprop vs captum": (lambda: camkit.GuidedBackprop(model)(x, classes),
                                      lambda: GuidedBackprop(model).attribute(x.clone(), target=classes)),
        "saliency vs captum": (lambda: camkit.Saliency(model)(x, classes),
                               lambda: Saliency(model).attribute(x.clone(), target=classes)),
        f"integrated gradients ({args.steps} steps) vs captum internal_batch_size=8": (
            lambda: camkit.IntegratedGradients(model, steps=args.steps)(x, classes),
            lambda: IntegratedGradients(model).attribute(x, target=classes, n_steps=args.steps,
                                                         internal_batch_size=8)),
        "guided Grad-CAM vs pytorch-grad-cam (GradCAM + GuidedBackpropReLUModel per image)": (
            lambda: camkit.GuidedGradCAM(model, "layer4")(x, classes), pgc_guided_gradcam),
        "FullGrad vs pytorch-grad-cam": (lambda: camkit.FullGrad(model, rescale="channel")(x, classes), pgc_fullgrad),
    }, args.repeats, args.only)


if __name__ == "__main__":
    main()
