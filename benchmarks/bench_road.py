"""ROAD's combined score side by side: camkit's ``road_combined`` against pytorch-grad-cam's ``ROADCombined``, one run.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/bench_road.py --sizes 112 224 --threads 1

resnet18 (random weights), ``--images`` images per size, CAM-like maps (a
smooth random field), the 9 default percentiles in both orders (18 imputed
masks per image), noise on as both libraries ship it. The two run
interleaved, ``--rounds`` times, with the same thread count; the median is
shown. Then both with noise off, to show the scores agree. ``--camkit-solver
cg`` times camkit's conjugate-gradient path instead of the CPU default (the
direct solve), e.g. to compare with the figures before the direct path.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import platform
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

from camkit import metrics
from camkit.ops import imputation

# The module, not the function `camkit.metrics.road` that shadows it as an attribute.
camkit_road = importlib.import_module("camkit.metrics.road")


def cam_like_maps(count: int, side: int, seed: int) -> torch.Tensor:
    """Smooth maps in [0, 1], as a 7x7 CAM upsampled: the kind of removal shapes ROAD meets in practice."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, 7, 7, generator=generator)
    maps = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    low, high = maps.amin(dim=(1, 2), keepdim=True), maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low)


def timed(run, device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = torch.as_tensor(run()).float().cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--camkit-solver", choices=["auto", "direct", "cg"], default="auto")
    parser.add_argument("--skip-peer", action="store_true", help="time camkit alone")
    arguments = parser.parse_args()

    torch.set_num_threads(arguments.threads)
    device = torch.device(arguments.device)
    # The metric calls the module-level name; a benchmark may rebind it to force a solver.
    camkit_road.linear_imputation = functools.partial(imputation.linear_imputation, solver=arguments.camkit_solver)
    model = torchvision.models.resnet18(weights=None).to(device)
    model.eval()
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} thread(s), device {device}, "
          f"camkit solver {arguments.camkit_solver}")
    print("| size | images | camkit s | pytorch-grad-cam s | speed-up | max |score difference|, noise off |")
    print("|---:|---:|---:|---:|---:|---:|")
    for side in arguments.sizes:
        generator = torch.Generator().manual_seed(side)
        x = torch.randn(arguments.images, 3, side, side, generator=generator).to(device)
        maps = cam_like_maps(arguments.images, side, seed=side).to(device)
        with torch.no_grad():
            classes = model(x).argmax(dim=1).tolist()

        def ours(noise: float = 0.01) -> torch.Tensor:
            return metrics.road_combined(model, x, maps, classes, noise=noise)

        def theirs(noise: float = 0.01) -> torch.Tensor:
            from pytorch_grad_cam.metrics import road as peer
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

            defaults = peer.NoisyLinearImputer.__init__.__defaults__
            peer.NoisyLinearImputer.__init__.__defaults__ = (noise, defaults[1])
            try:
                return peer.ROADCombined()(x, maps.cpu().numpy(), [ClassifierOutputSoftmaxTarget(c) for c in classes],
                                           model)
            finally:
                peer.NoisyLinearImputer.__init__.__defaults__ = defaults

        camkit_times, peer_times = [], []
        for _ in range(arguments.rounds):
            camkit_times.append(timed(ours, device)[0])
            if not arguments.skip_peer:
                peer_times.append(timed(theirs, device)[0])
        camkit_seconds = statistics.median(camkit_times)
        if arguments.skip_peer:
            print(f"| {side}² | {arguments.images} | {camkit_seconds:.2f} | - | - | - |")
            continue
        peer_seconds = statistics.median(peer_times)
        difference = (ours(0.0).cpu() - torch.as_tensor(theirs(0.0)).cpu()).abs().max().item()
        print(f"| {side}² | {arguments.images} | {camkit_seconds:.2f} | {peer_seconds:.2f} | "
              f"{peer_seconds / camkit_seconds:.2g}x | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
