"""Speed of issue 27's CAM-family methods against pytorch-grad-cam 1.5.7, side by side in one process.

Each round calls every entry once (interleaved, so load on a shared machine
hits all alike); the median per call is reported with its ratio to the floor
(one forward plus a backward stopped at the layer) and to pytorch-grad-cam's
same method. DFF runs without a head; its NMF is timed as part of the call.
SESS runs ``--sess-scales`` scales (the paper's 12 give 100+ patches per image,
minutes per call on a shared CPU), both with 32 patches per pass. Attention
rollout runs on a torchvision ViT-B/16 at the same size and batch, against
that ViT's own no-grad forward.

    python benchmarks/bench_new_methods.py                       # resnet50, batch 4, 160x160, CPU
    python benchmarks/bench_new_methods.py --model resnet18 --size 64 --batch 2 --rounds 2
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torchvision
from pytorch_grad_cam import FEM, SESS, DeepFeatureFactorization, RandomCAM, RefineCAM, SegEigenCAM, ShapleyCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import camkit
from bench_methods import floor_pass  # the same floor as the main benchmark (run from benchmarks/ or the root)
from bench_vit import build, forward_only


def peer_call(peer: object, x: torch.Tensor, classes: list[int]) -> Callable[[], object]:
    targets = [ClassifierOutputTarget(c) for c in classes]
    return lambda: peer(x, targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sess-scales", type=int, default=2, help="SESS's num_scales for both (paper: 12)")
    parser.add_argument("--skip", nargs="*", default=[], help="entries whose name contains one of these are left out")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(num_classes=1000).eval()
    layer = model.layer4
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()
    layers = [model.layer2, model.layer3, model.layer4]
    peers = {
        "shapleycam": ShapleyCAM(model, [layer]), "fem": FEM(model, [layer]),
        "segeigencam": SegEigenCAM(model, [layer]), "randomcam": RandomCAM(model, [layer]),
    }
    entries: dict[str, Callable[[], object]] = {"floor": floor_pass(model, layer, x)}
    for name, peer in peers.items():
        entries[f"camkit {name}"] = (lambda n=name: lambda: camkit.METHODS[n](model, "layer4")(x, classes))()
        entries[f"peer {name}"] = peer_call(peer, x, classes)
    entries["camkit fem (peer's weighting)"] = lambda: camkit.FEM(model, "layer4", weighting="pytorch-grad-cam")(x)
    refine = RefineCAM(model, layers)
    entries["camkit refinecam (3 layers)"] = lambda: camkit.RefineCAM(model, ["layer2", "layer3", "layer4"])(x, classes)
    entries["peer refinecam (3 layers)"] = peer_call(refine, x, classes)
    dff = DeepFeatureFactorization(model, layer)
    entries["camkit deepfeaturefactorization (n=5)"] = lambda: camkit.DeepFeatureFactorization(model, "layer4").explain(x)
    entries["peer deepfeaturefactorization (n=5)"] = lambda: dff(x, n_components=5)
    sess = SESS(model, [layer], num_scales=args.sess_scales, batch_size=32)
    sess_name = f"sess ({args.sess_scales} scales)"
    entries[f"camkit {sess_name}"] = lambda: camkit.SESS(model, "layer4", num_scales=args.sess_scales, batch_size=32)(
        x, classes
    )
    entries[f"peer {sess_name}"] = peer_call(sess, x, classes)
    vit = build("torchvision", "vit_b_16", args.size)
    entries["vit_b_16 forward (no grad)"] = forward_only(vit, x)
    entries["camkit attentionrollout (vit_b_16)"] = lambda: camkit.AttentionRollout(vit)(x)
    entries = {name: run for name, run in entries.items() if not any(part in name for part in args.skip)}
    times: dict[str, list[float]] = {name: [] for name in entries}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's convergence warnings inside the peer's DFF
        for name, run in entries.items():  # warm-up
            run()
        for _ in range(args.rounds):
            for name, run in entries.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    floor = median["floor"]
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, CPU, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds (median)")
    print(f"{'entry':44s} {'seconds':>8s} {'x floor':>8s} {'x peer':>7s}")
    for name, seconds in median.items():
        peer_name = "peer " + name.removeprefix("camkit ")
        if "attentionrollout" in name:  # the ViT's own forward is its reference
            peer_name = "vit_b_16 forward (no grad)"
        versus = f"{seconds / median[peer_name]:7.2f}" if name.startswith("camkit") and peer_name in median else ""
        print(f"{name:44s} {seconds:8.3f} {seconds / floor:8.2f} {versus:>7s}")
    print(f"(x peer of attentionrollout: against the ViT's forward; {args.sess_scales} SESS scales)")
    for peer in (*peers.values(), dff, sess.base_cam):
        peer.activations_and_grads.release()
    for per_layer in refine.base_cam_per_layer:
        per_layer.activations_and_grads.release()


if __name__ == "__main__":
    main()
