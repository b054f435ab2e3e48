"""Speed of the attention methods against one plain forward, and LeGrad against torchcam's, in one process.

Each round times every entry once (interleaved), so a machine's load falls on
all of them alike; the table gives medians and the ratio to one forward under
``torch.no_grad()`` (the model's own fused kernels on: torchvision's fast path,
timm's ``fused_attn``). Models are random-init, nothing is downloaded.

    python benchmarks/bench_vit.py                                  # vit_b_16, batch 4, 224x224, CPU
    python benchmarks/bench_vit.py --model vit_b_16 --size 112 --batch 2 --rounds 3
    python benchmarks/bench_vit.py --family timm --model vit_small_patch16_224
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

import camkit


def build(family: str, name: str, size: int) -> torch.nn.Module:
    if family == "timm":
        import timm

        return timm.create_model(name, pretrained=False, img_size=size).eval()
    model = torchvision.models.get_model(name, weights=None, image_size=size).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # zero-initialised by torchvision
    return model


def forward_only(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def torchcam_legrad(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    from torchcam.methods import LeGrad

    def run() -> object:
        with LeGrad(model, list(model.encoder.layers)) as extractor:
            scores = model(x)
            return extractor(scores.argmax(1).tolist(), scores)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("torchvision", "timm"), default="torchvision")
    parser.add_argument("--model", default="vit_b_16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build(args.family, args.model, args.size)
    x = torch.randn(args.batch, 3, args.size, args.size)
    entries: dict[str, Callable[[], object]] = {
        "forward (no_grad)": forward_only(model, x),
        "camkit attentionrollout": lambda: camkit.AttentionRollout(model)(x),
        "camkit transformerattribution": lambda: camkit.TransformerAttribution(model)(x),
        "camkit legrad": lambda: camkit.LeGrad(model)(x),
    }
    if args.family == "torchvision":
        entries["torchcam LeGrad"] = torchcam_legrad(model, x)
    for run in entries.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in entries}
    for _ in range(args.rounds):
        for name, run in entries.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    floor = statistics.median(times["forward (no_grad)"])
    print(f"{args.family} {args.model}, batch {args.batch}, {args.size}x{args.size}, {args.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| entry | median s | x forward |")
    print("|---|---|---|")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"| {name} | {median:.3f} | {median / floor:.2f} |")


if __name__ == "__main__":
    main()
