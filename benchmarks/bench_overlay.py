"""Images per second for a folder run: `camkit overlay` against a loop over pytorch-grad-cam's API.

The peer loop does what pytorch-grad-cam's example script does, one image at a
time: read, preprocess, explain, overlay, write. Both use resnet50 (random
weights from a local file: nothing is downloaded), Grad-CAM on layer4, 224x224
inputs, top-1 targets, on the CPU.

    python benchmarks/bench_overlay.py --images 200
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image


def make_folder(folder: Path, count: int) -> None:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - 224), rng.integers(0, photo.shape[1] - 224)
        Image.fromarray(photo[top : top + 224, left : left + 224]).save(folder / f"image{i:04d}.jpg", quality=92)


def peer_loop(folder: Path, out: Path, model: torch.nn.Module) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image

    out.mkdir(parents=True, exist_ok=True)
    cam = GradCAM(model=model, target_layers=[model.layer4])
    for path in sorted(folder.glob("*.jpg")):
        rgb = cv2.imread(str(path), 1)[:, :, ::-1]
        rgb = np.float32(cv2.resize(rgb, (224, 224))) / 255
        input_tensor = preprocess_image(rgb, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        grayscale = cam(input_tensor=input_tensor, targets=None)[0]
        visual = show_cam_on_image(rgb, grayscale, use_rgb=True)
        cv2.imwrite(str(out / f"{path.stem}_gradcam.png"), visual[:, :, ::-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from camkit.cli import main as camkit_main

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        folder = root / "images"
        folder.mkdir()
        make_folder(folder, args.images)
        weights = root / "resnet50.pt"
        torch.save(torchvision.models.resnet50().state_dict(), weights)
        model = torchvision.models.resnet50()
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.eval()

        timings = {}
        for name in ("pytorch-grad-cam loop", "camkit overlay", "pytorch-grad-cam loop ", "camkit overlay "):
            out = root / "out"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            if name.startswith("camkit"):
                status = camkit_main(["overlay", str(folder), "-o", str(out), "--model", "resnet50", "--weights", str(weights),
                                      "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--quiet"])
                assert status == 0
            else:
                peer_loop(folder, out, model)
            timings.setdefault(name.strip(), []).append(time.perf_counter() - start)
            assert len(list(out.glob("*_gradcam.png"))) == args.images

    best = {name: min(values) for name, values in timings.items()}
    print(f"# {args.images} images 224x224, resnet50 Grad-CAM layer4, CPU, {args.threads} threads, "
          f"camkit batch {args.batch_size} with {args.workers} workers, best of 2 interleaved runs")
    print("| tool | seconds | images/s |\n|---|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.1f} | {args.images / seconds:.1f} |")
    print(f"\ncamkit overlay is {best['pytorch-grad-cam loop'] / best['camkit overlay']:.2f}x the peer loop's throughput")


if __name__ == "__main__":
    main()
