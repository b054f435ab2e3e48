"""Speed of camkit's explainers against pytorch-grad-cam, torchcam and the CF-CAM authors' path.

Every method is timed in one process with interleaved repetitions (one call of
each per round) and reported as a ratio to the floor: one forward pass plus a
backward pass stopped at the target layer, the least any gradient method can do.

    python benchmarks/bench_methods.py                 # resnet50, batch 8, 224x224, CPU
    python benchmarks/bench_methods.py --rounds 5 --memory-calls 200
    python benchmarks/bench_methods.py --model resnet18 --size 64 --batch 2 --rounds 1 --skip-authors --memory-calls 0
"""
from __future__ import annotations

import argparse
import gc
import platform
import resource
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

import camkit


def floor_pass(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """One forward and one backward that stops at ``layer``: the physical floor."""

    def run() -> object:
        store = {}
        handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
        try:
            logits = model(x)
            scores = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            return torch.autograd.grad(scores, store["a"])
        finally:
            handle.remove()

    return run


def forward_only(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def authors_cfcam(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """The CF-CAM authors' recipe as their code runs it: each image through numpy and scikit-learn.

    Re-implemented here from the paper's description and the authors' public
    code (a forward/backward per image, a dense numpy distance tensor, sklearn
    DBSCAN, a Python loop over clusters), as the baseline camkit replaces.
    """
    from sklearn.cluster import DBSCAN

    def one_image(image: torch.Tensor) -> torch.Tensor:
        store = {}
        handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
        try:
            logits = model(image)
            activation = store["a"]
            (gradient,) = torch.autograd.grad(logits[0, logits[0].argmax()], activation)
        finally:
            handle.remove()
        feats = activation.detach()[0]
        grads = gradient[0]
        channels, height, width = feats.shape
        matrix = feats.reshape(channels, -1).numpy()
        norms = np.linalg.norm(matrix, axis=1)
        important = norms >= np.percentile(norms, 75)
        rest = np.where(~important)[0]
        labels = np.full(channels, -2)
        if len(rest):
            points = matrix[rest]
            distances = np.linalg.norm(points[:, None] - points[None, :], axis=2)
            np.fill_diagonal(distances, np.inf)
            flat = distances.flatten()
            eps = max(np.percentile(flat[flat != np.inf], 25), 1e-5)
            labels[rest] = DBSCAN(eps=eps, min_samples=max(2, int(len(rest) * 0.05))).fit(points).labels_
        weights = torch.zeros(channels)
        weights[important] = grads[important].mean((1, 2))
        for cluster in range(labels.max() + 1):
            members = np.where(labels == cluster)[0]
            mean_gradient = grads[members].mean(0)[None, None]
            rows = torch.arange(height).float() - height / 2
            cols = torch.arange(width).float() - width / 2
            spatial = torch.exp(-(rows[:, None] ** 2 + cols[None] ** 2) / 50.0)
            kernel = spatial * torch.exp(-((mean_gradient - mean_gradient.mean()) ** 2) / 0.02)
            kernel = kernel / (kernel.sum() + 1e-6)
            weights[members] = F.conv2d(mean_gradient, kernel, padding="same").mean()
        kept = torch.from_numpy(labels != -1)
        cam = (weights[kept].softmax(0)[:, None, None] * feats[kept]).sum(0).relu()
        return F.interpolate(cam[None, None], size=image.shape[2:], mode="bilinear", align_corners=False)[0, 0]

    return lambda: [one_image(x[b : b + 1]) for b in range(x.shape[0])]


# The methods of issue 14, timed against their peers in the same run.
NEW_METHODS = ("cam", "hirescam", "gradcamelementwise", "xgradcam", "layercam", "eigengradcam", "kpcacam", "finercam")
PYTORCH_GRAD_CAM_PEERS = {
    "HiResCAM": {}, "GradCAMElementWise": {}, "XGradCAM": {}, "LayerCAM": {}, "EigenGradCAM": {},
    "KPCA_CAM": {"kernel": "rbf"}, "FinerCAM": {},
}


def camkit_method(name: str, model, layer_name: str, x, **options) -> Callable[[], object]:
    return lambda: camkit.create(name, model, layer_name, **options)(x)


def pytorch_grad_cam_method(cls_name: str, model, layer, x, call: dict | None = None, **options) -> Callable[[], object]:
    import pytorch_grad_cam

    def run() -> object:
        # Built per call and released: its hooks would otherwise copy activations
        # and gradients during every other method's forward pass too.
        cam = getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[layer], **options)
        try:
            return cam(input_tensor=x, targets=None, **(call or {}))  # None: each image's top class, like camkit
        finally:
            getattr(cam, "base_cam", cam).activations_and_grads.release()

    return run


def torchcam_method(cls_name: str, model, layer_name: str, x, **options) -> Callable[[], object]:
    import torchcam.methods

    def run() -> object:
        with getattr(torchcam.methods, cls_name)(model, target_layer=layer_name, **options) as extractor:
            scores = model(x)
            maps = extractor(scores.argmax(1).tolist(), scores)
        return maps

    return run


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-calls", type=int, default=200, help="consecutive Grad-CAM calls for the RSS check (0 skips)")
    parser.add_argument("--skip-authors", action="store_true", help="skip the slow per-image CF-CAM baseline")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="the model's and the input's precision (maps are float32 whatever it is)")
    parser.add_argument("--only", default="", help="comma-separated substrings: time only candidates whose name has one")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = torchvision.models.get_model(args.model, weights=None).eval().to(device, dtype)
    layer = dict(model.named_modules())[args.layer]
    fc_name = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)][-1]
    x = torch.randn(args.batch, 3, args.size, args.size, device=device, dtype=dtype)

    def sync(fn: Callable[[], object]) -> Callable[[], object]:
        if device.type != "cuda":
            return fn
        return lambda: (fn(), torch.cuda.synchronize())

    candidates: dict[str, Callable[[], object]] = {
        "floor: forward + backward to layer": floor_pass(model, layer, x),
        "forward only (no grad)": forward_only(model, x),
        "camkit gradcam": lambda: camkit.GradCAM(model, args.layer)(x),
        "camkit gradcam++": lambda: camkit.GradCAMPlusPlus(model, args.layer)(x),
        "camkit eigencam": lambda: camkit.EigenCAM(model, args.layer)(x),
        "camkit smoothgradcam++ (4 samples)": lambda: camkit.SmoothGradCAMPlusPlus(model, args.layer, n_samples=4)(x),
        "camkit smoothgradcam++ (16 samples)": lambda: camkit.SmoothGradCAMPlusPlus(model, args.layer, n_samples=16)(x),
        **{f"camkit smoothgradcam++ (4 samples, {size} images per pass)":
           (lambda size=size: camkit.SmoothGradCAMPlusPlus(model, args.layer, n_samples=4, batch_size=size)(x))
           for size in (16, 32)},
    }
    if "cfcam" in camkit.METHODS:
        candidates["camkit cfcam"] = lambda: camkit.METHODS["cfcam"](model, args.layer)(x)
    for name in NEW_METHODS:
        candidates[f"camkit {name}"] = camkit_method(name, model, args.layer, x)
    candidates["camkit gradcam eigen_smooth"] = camkit_method("gradcam", model, args.layer, x, eigen_smooth=True)
    candidates["camkit gradcam augment (6 copies)"] = camkit_method("gradcam", model, args.layer, x, augment=True)
    if device.type == "cpu":
        candidates.update({
            "pytorch-grad-cam GradCAM": pytorch_grad_cam_method("GradCAM", model, layer, x),
            "pytorch-grad-cam GradCAMPlusPlus": pytorch_grad_cam_method("GradCAMPlusPlus", model, layer, x),
            "pytorch-grad-cam EigenCAM": pytorch_grad_cam_method("EigenCAM", model, layer, x),
            **{f"pytorch-grad-cam {cls_name}": pytorch_grad_cam_method(cls_name, model, layer, x, **options)
               for cls_name, options in PYTORCH_GRAD_CAM_PEERS.items()},
            "pytorch-grad-cam GradCAM eigen_smooth": pytorch_grad_cam_method("GradCAM", model, layer, x,
                                                                               call={"eigen_smooth": True}),
            "pytorch-grad-cam GradCAM aug_smooth": pytorch_grad_cam_method("GradCAM", model, layer, x,
                                                                             call={"aug_smooth": True}),
        })
    candidates.update({
        "torchcam GradCAM": torchcam_method("GradCAM", model, args.layer, x),
        "torchcam GradCAMpp": torchcam_method("GradCAMpp", model, args.layer, x),
        "torchcam SmoothGradCAMpp (4 samples)": torchcam_method(
            "SmoothGradCAMpp", model, args.layer, x, num_samples=4, input_shape=tuple(x.shape[1:])
        ),
        "torchcam SmoothGradCAMpp (16 samples)": torchcam_method(
            "SmoothGradCAMpp", model, args.layer, x, num_samples=16, input_shape=tuple(x.shape[1:])
        ),
        "torchcam CAM": torchcam_method("CAM", model, args.layer, x, fc_layer=fc_name),
        "torchcam XGradCAM": torchcam_method("XGradCAM", model, args.layer, x),
        "torchcam LayerCAM": torchcam_method("LayerCAM", model, args.layer, x),
    })
    if not args.skip_authors and device.type == "cpu":
        candidates["CF-CAM authors' per-image numpy/sklearn path"] = authors_cfcam(model, layer, x)

    if args.only:
        wanted = [part.strip() for part in args.only.split(",") if part.strip()]
        candidates = {name: fn for name, fn in candidates.items()
                      if name.startswith("floor") or any(part in name for part in wanted)}

    # Memory first: the peers and the authors' path raise the peak RSS later.
    memory_line = ""
    if args.memory_calls:
        cam = camkit.GradCAM(model, args.layer)
        for _ in range(5):
            cam(x)
        gc.collect()
        before = peak_rss_mb()
        for _ in range(args.memory_calls):
            cam(x)
        memory_line = (f"peak RSS over {args.memory_calls} consecutive Grad-CAM calls: {before:.0f} MB -> "
                       f"{peak_rss_mb():.0f} MB (+{peak_rss_mb() - before:.1f} MB), measured before any other method ran")

    runs = {name: sync(fn) for name, fn in candidates.items()}
    failed: dict[str, str] = {}
    for name, fn in list(runs.items()):  # warm-up; a peer that cannot run this input is reported, not fatal
        try:
            fn()
        except Exception as error:  # noqa: BLE001 - peers raise anything
            failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
            del runs[name]
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn))
            model.zero_grad(set_to_none=True)  # peers write parameter grads; keep rounds comparable

    floor = statistics.median(times["floor: forward + backward to layer"])
    print(f"# {args.model} {args.layer}, batch {args.batch}, {args.size}x{args.size}, {device}, {args.dtype}, "
          f"{args.threads} threads, torch {torch.__version__}, {platform.machine()}, median of {args.rounds} rounds")
    print(f"| method | median s | x floor |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {median / floor:.2f} |")
    if "camkit cfcam" in times and "CF-CAM authors' per-image numpy/sklearn path" in times:
        speedup = statistics.median(times["CF-CAM authors' per-image numpy/sklearn path"]) / statistics.median(times["camkit cfcam"])
        print(f"\ncamkit CF-CAM is {speedup:.1f}x faster than the authors' per-image path")
    for name, error in failed.items():
        print(f"\n{name} could not run on this input: {error}")
    if memory_line:
        print(f"\n{memory_line}")


if __name__ == "__main__":
    main()
