"""Peak memory of camkit's explainers against the floor at the same batch, each case in a fresh process.

The floor is one forward plus a backward stopped at the target layer (autograd
keeps every activation the backward needs). Peak RSS is the process's
``ru_maxrss`` after the call, minus nothing: model, input and interpreter are
the same in every case, so ratios compare what each call adds on top.

    python benchmarks/bench_memory.py                       # resnet50 layer4, 224², CPU
    python benchmarks/bench_memory.py --device cuda         # peak allocated GPU memory instead
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = {
    # name: (batch, explainer spec or "floor")
    "floor, batch 64": (64, "floor"),
    "Grad-CAM, batch 64": (64, {"method": "gradcam"}),
    "Grad-CAM++, batch 64": (64, {"method": "gradcam++"}),
    "floor, batch 8": (8, "floor"),
    "Smooth Grad-CAM++ n=16, batch 8 (default passes)": (8, {"method": "smoothgradcam++", "n_samples": 16}),
    "Smooth Grad-CAM++ n=16, batch 8, batch_size=128 (one pass)": (
        8, {"method": "smoothgradcam++", "n_samples": 16, "batch_size": 128}),
    "Grad-CAM augment, batch 8 (default passes)": (8, {"method": "gradcam", "augment": True}),
    "Grad-CAM augment, batch 8, batch_size=48 (one pass)": (8, {"method": "gradcam", "augment": True, "batch_size": 48}),
}


def child(spec: str) -> None:
    import resource

    import torch
    import torchvision

    import camkit

    case = json.loads(spec)
    torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    model = torchvision.models.get_model(case["model"], weights=None).eval().to(device)
    x = torch.randn(case["batch"], 3, case["size"], case["size"], device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if case["explainer"] == "floor":
        store = {}
        layer = dict(model.named_modules())[case["layer"]]
        handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
        logits = model(x)
        handle.remove()
        torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), store["a"])
    else:
        options = dict(case["explainer"])
        camkit.create(options.pop("method"), model, case["layer"], **options)(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    results = {}
    for name, (batch, explainer) in CASES.items():
        spec = json.dumps({"model": args.model, "layer": args.layer, "size": args.size, "device": args.device,
                           "threads": args.threads, "batch": batch, "explainer": explainer})
        out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
        print(f"{name}: {results[name]:.0f} MB", flush=True)
    unit = "peak allocated GPU MB" if args.device.startswith("cuda") else "peak RSS MB"
    print(f"\n# {args.model} {args.layer}, {args.size}x{args.size}, {args.device}, {unit}")
    print("| case | peak MB | x floor at the same batch |\n|---|---:|---:|")
    for name, (batch, _explainer) in CASES.items():
        floor = results[f"floor, batch {batch}"]
        print(f"| {name} | {results[name]:.0f} | {results[name] / floor:.2f} |")


if __name__ == "__main__":
    main()
