"""Perturbation CAMs side by side: camkit against pytorch-grad-cam and torchcam, and against the forwards Score-CAM cannot avoid.

    python benchmarks/bench_perturbation.py --rounds 2

resnet18 (random weights), layer4, batch 2, 112x112, interleaved rounds, median:
camkit's Ablation-CAM against pytorch-grad-cam's; camkit's Score-CAM against
the B x K masked forwards themselves (inputs prepared outside the timing,
same chunk size) and against both peers' Score-CAM; how far the maps agree.
Then seconds per image on resnet50 layer4 at 224x224 (``--resnet50-images``).
Then (``--demo-images``, 0 skips) SS-CAM, IS-CAM and Score-CAM on the bundled
demo model at 64x64, camkit against torchcam with the same sample counts:
wall seconds per image and this process's user and system CPU seconds for
each (the system share is what the chunking's allocations cost).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision

import camkit
from camkit.ops.maps import min_max_normalise, upsample


def masked_forwards(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor,
                    chunk: int) -> tuple[Callable[[], object], int]:
    """The B x K forwards of masked copies, their inputs built beforehand: the floor of any Score-CAM."""
    store = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    activations = store["a"]
    batch, channels = activations.shape[:2]
    masks = min_max_normalise(upsample(activations.flatten(0, 1), tuple(x.shape[2:])))
    copies = x.repeat_interleave(channels, 0) * masks[:, None]

    def run() -> object:
        with torch.no_grad():
            return [model(copies[start : start + chunk]) for start in range(0, len(copies), chunk)]

    return run, batch * channels


def pytorch_grad_cam_method(cls_name: str, model, layer, x, batch_size: int) -> Callable[[], object]:
    import pytorch_grad_cam

    def run() -> object:
        cam = getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[layer])
        cam.batch_size = batch_size  # both peers read it: copies per forward
        try:
            return torch.as_tensor(cam(input_tensor=x, targets=None))
        finally:
            cam.activations_and_grads.release()

    return run


def torchcam_scorecam(model, layer_name: str, x, batch_size: int) -> Callable[[], object]:
    import torchcam.methods

    def run() -> object:
        with torchcam.methods.ScoreCAM(model, target_layer=layer_name, batch_size=batch_size,
                                       input_shape=tuple(x.shape[1:])) as extractor:
            scores = model(x)
            maps = extractor(scores.argmax(1).tolist(), scores)[0]
        return F.interpolate(maps[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]

    return run


def torchcam_method(cls_name: str, model, layer_name: str, x, batch_size: int, **options) -> Callable[[], object]:
    import torchcam.methods

    def run() -> object:
        with getattr(torchcam.methods, cls_name)(model, target_layer=layer_name, batch_size=batch_size,
                                                 input_shape=tuple(x.shape[1:]), **options) as extractor:
            scores = model(x)
            return extractor(scores.argmax(1).tolist(), scores)[0]

    return run


def cpu_times(fn: Callable[[], object]) -> tuple[float, float, float]:
    """Wall, user and system seconds of one call (this process, all its threads)."""
    before, start = os.times(), time.perf_counter()
    fn()
    wall, after = time.perf_counter() - start, os.times()
    return wall, after.user - before.user, after.system - before.system


def demo_side_by_side(images: int, samples: int, chunk: int) -> None:
    """SS-CAM / IS-CAM / Score-CAM on the demo model, camkit and torchcam, same images and sample counts."""
    from camkit.app.demo import load_demo_model

    model = load_demo_model().eval()
    x = torch.randn(images, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    pairs = {
        "ScoreCAM": (lambda: camkit.ScoreCAM(model, "features")(x),
                     torchcam_method("ScoreCAM", model, "features", x, chunk)),
        "ISCAM": (lambda: camkit.ISCAM(model, "features", n_samples=samples)(x),
                  torchcam_method("ISCAM", model, "features", x, chunk, num_samples=samples)),
        "SSCAM": (lambda: camkit.SSCAM(model, "features", n_samples=samples)(x),
                  torchcam_method("SSCAM", model, "features", x, chunk, num_samples=samples)),
    }
    print(f"\n# demo model, {images} images 64x64, {samples} samples (IS-CAM, SS-CAM), {torch.get_num_threads()} "
          "threads: s per image (wall) | user s | system s | system/user")
    print("| method | camkit s/img | camkit user | camkit sys | sys/user | torchcam s/img | torchcam user | "
          "torchcam sys | sys/user |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (ours, theirs) in pairs.items():
        cells = []
        for fn in (ours, theirs):
            wall, user, system = cpu_times(fn)
            cells += [f"{wall / images:.2f}", f"{user:.1f}", f"{system:.1f}", f"{system / max(user, 1e-9):.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


def correlation(first: torch.Tensor, second: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack((first.double().flatten(), second.double().flatten())))[0, 1])


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=64, help="copies per forward for the floor and the peers")
    parser.add_argument("--resnet50-images", type=int, default=1, help="0 skips the resnet50 224x224 timing")
    parser.add_argument("--resnet50-channels", type=int, default=256,
                        help="Score-CAM channels scored on resnet50 (of 2048; its cost is linear in them)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--demo-images", type=int, default=2, help="0 skips the demo-model SS-CAM/IS-CAM table")
    parser.add_argument("--demo-samples", type=int, default=4, help="n_samples of SS-CAM and IS-CAM in that table")
    parser.add_argument("--skip-resnet18", action="store_true", help="only the demo-model table (and resnet50)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.demo_images:
        demo_side_by_side(args.demo_images, args.demo_samples, args.chunk)
    if args.skip_resnet18:
        return
    device = torch.device(args.device)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    x = torch.randn(2, 3, 112, 112, device=device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)

    floor, rows = masked_forwards(model, model.layer4, x, args.chunk)
    scorecam = camkit.ScoreCAM(model, "layer4")
    ablation = camkit.AblationCAM(model, "layer4")
    candidates: dict[str, Callable[[], object]] = {
        "B x K masked forwards (Score-CAM's floor)": floor,
        "camkit ScoreCAM": lambda: scorecam(x),
        "camkit AblationCAM": lambda: ablation(x),
        "pytorch-grad-cam AblationCAM": pytorch_grad_cam_method("AblationCAM", model, model.layer4, x, args.chunk),
        "pytorch-grad-cam ScoreCAM": pytorch_grad_cam_method("ScoreCAM", model, model.layer4, x, args.chunk),
        "torchcam ScoreCAM": torchcam_scorecam(model, "layer4", x, args.chunk),
    }
    outputs = {name: fn() for name, fn in candidates.items()}  # warm-up, and the maps to compare
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, fn in candidates.items():
            times[name].append(timed(lambda: (fn(), sync())))
    median = {name: statistics.median(values) for name, values in times.items()}

    print(f"# resnet18 layer4, batch 2, 112x112, {device}, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.machine()}, median of {args.rounds} rounds; {rows} (image, channel) pairs")
    print("| what | median s |\n|---|---:|")
    for name, value in median.items():
        print(f"| {name} | {value:.3f} |")
    print(f"\nAblation-CAM: camkit is {median['pytorch-grad-cam AblationCAM'] / median['camkit AblationCAM']:.1f}x "
          f"faster than pytorch-grad-cam ({ablation.path_used} path)")
    floor_time = median["B x K masked forwards (Score-CAM's floor)"]
    for name in ("camkit ScoreCAM", "pytorch-grad-cam ScoreCAM", "torchcam ScoreCAM"):
        print(f"{name}: {median[name] / floor_time:.2f}x the masked forwards")
    ours = outputs["camkit ScoreCAM"].cpu()
    print(f"Score-CAM map correlation, camkit vs pytorch-grad-cam: "
          f"{correlation(ours, outputs['pytorch-grad-cam ScoreCAM'].cpu()):.4f}; "
          f"vs torchcam: {correlation(ours, outputs['torchcam ScoreCAM'].cpu()):.4f}; "
          f"pytorch-grad-cam vs torchcam: "
          f"{correlation(outputs['pytorch-grad-cam ScoreCAM'].cpu(), outputs['torchcam ScoreCAM'].cpu()):.4f}")
    difference = (outputs["camkit AblationCAM"].cpu() - outputs["pytorch-grad-cam AblationCAM"].cpu()).abs().max()
    print(f"Ablation-CAM max |camkit - pytorch-grad-cam|: {float(difference):.2e}")

    if args.resnet50_images:
        big = torchvision.models.resnet50(weights=None).eval().to(device)
        image = torch.randn(args.resnet50_images, 3, 224, 224, device=device)
        ablation50 = camkit.AblationCAM(big, "layer4")
        seconds = timed(lambda: (ablation50(image), sync()))
        print(f"resnet50 layer4 224x224 camkit AblationCAM: {seconds / args.resnet50_images:.2f} s per image "
              f"({ablation50.path_used} path)")
        scorecam50 = camkit.ScoreCAM(big, "layer4", top_channels=args.resnet50_channels)
        seconds = timed(lambda: (scorecam50(image), sync())) / args.resnet50_images
        print(f"resnet50 layer4 224x224 camkit ScoreCAM, top {args.resnet50_channels} channels: {seconds:.2f} s per "
              f"image (all 2048: about {seconds * 2048 / args.resnet50_channels:.0f} s, linear in the channels)")


if __name__ == "__main__":
    main()
