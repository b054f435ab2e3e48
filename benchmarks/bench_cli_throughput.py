"""`camkit overlay`'s images/s against the explainer's own, on the same images, start-up excluded.

The explainer side is the least a folder run must do: Grad-CAM's explain on
batches that are already decoded, resized and normalised in memory. The CLI
side is the whole path: discovery, decoding, resizing, explaining, blending,
captions, PNG encoding, writing and the manifest. Both use resnet18 (random
weights), 224x224 JPEGs, batch 16, the CPU, the same torch thread count.

Start-up (imports, building and checking the model, the first forward's
allocations) is excluded by differencing: the CLI runs on a folder of N1 and
one of N2 images, and its throughput is (N2 - N1) / (T(N2) - T(N1)). The
explainer side is timed the same way, so one-off costs cancel on both sides.
Rounds are interleaved (explainer, CLI, explainer, CLI, ...) and the median
of each difference is taken.

    python benchmarks/bench_cli_throughput.py --small 32 --large 96 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image


def make_folder(folder: Path, count: int) -> None:
    """``count`` 224x224 JPEGs cut from scikit-learn's two sample photos (no download)."""
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - 224), rng.integers(0, photo.shape[1] - 224)
        Image.fromarray(photo[top : top + 224, left : left + 224]).save(folder / f"image{i:04d}.jpg", quality=92)


def explainer_seconds(model: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    import camkit

    cam = camkit.GradCAM(model)
    start = time.perf_counter()
    for batch in batches:
        cam(batch)
    return time.perf_counter() - start


def cli_seconds(folder: Path, out: Path, weights: Path, batch_size: int, extra: list[str]) -> float:
    from camkit.cli import main as camkit_main

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    status = camkit_main(
        ["overlay", str(folder), "-o", str(out), "--model", "resnet18", "--weights", str(weights),
         "--batch-size", str(batch_size), "--quiet", *extra]
    )
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"camkit overlay exited {status}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=32, help="images in the small folder (N1)")
    parser.add_argument("--large", type=int, default=96, help="images in the large folder (N2)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cli-args", default="", help="extra `camkit overlay` flags, e.g. '--no-caption'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["CAMKIT_THREADS"] = str(args.threads)
    import camkit

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        folders = {count: root / f"images{count}" for count in (args.small, args.large)}
        for count, folder in folders.items():
            make_folder(folder, count)
        weights = root / "resnet18.pt"
        torch.save(torchvision.models.resnet18().state_dict(), weights)
        model = torchvision.models.resnet18()
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.eval()
        batches = {}
        for count, folder in folders.items():
            x, _ = camkit.load_images(folder, size=224)
            batches[count] = list(x.split(args.batch_size))

        explainer_diffs, cli_diffs = [], []
        extra = args.cli_args.split()
        explainer_seconds(model, batches[args.small])  # warm-up
        for _ in range(args.rounds):
            small, large = (explainer_seconds(model, batches[n]) for n in (args.small, args.large))
            explainer_diffs.append(large - small)
            small, large = (cli_seconds(folders[n], root / "out", weights, args.batch_size, extra)
                            for n in (args.small, args.large))
            cli_diffs.append(large - small)
            print(f"round: explainer {explainer_diffs[-1]:.2f} s, cli {cli_diffs[-1]:.2f} s "
                  f"for {args.large - args.small} images", flush=True)

    images = args.large - args.small
    explainer_rate = images / statistics.median(explainer_diffs)
    cli_rate = images / statistics.median(cli_diffs)
    print(f"# resnet18 Grad-CAM, 224x224, batch {args.batch_size}, CPU, {args.threads} threads, "
          f"T({args.large}) - T({args.small}), median of {args.rounds} interleaved rounds; load {os.getloadavg()}")
    print("| what | images/s |\n|---|---:|")
    print(f"| explainer alone (decoded batches in memory) | {explainer_rate:.2f} |")
    print(f"| `camkit overlay {args.cli_args}`".rstrip() + f" (whole path) | {cli_rate:.2f} |")
    print(f"\nCLI / explainer: {cli_rate / explainer_rate:.2f}x")


if __name__ == "__main__":
    main()
