"""One map per detection: camkit's batched explain_detections against one call per box, and pytorch-grad-cam's per-box way.

YOLOv8n built from ultralytics' yaml (random weights, nothing downloaded; the
class branch's prior bias is zeroed so that the threshold passes boxes), one
320 x 320 image, 8 detections, Grad-CAM at the head's P3 input (model.15).
All variants run side by side in this process, interleaved, and the median of
``--repeats`` runs is reported:

* camkit batched: ``explain_detections(x, score_threshold=0, max_detections=8)``:
  one forward, the 8 backwards from it (per score on CPU, the default there);
* camkit batched, vmapped: the same with one ``is_grads_batched`` backward;
* camkit, 8 calls: ``explain(x, DetectionScore(...))`` per detection;
* pytorch-grad-cam, 8 calls: its ``GradCAM`` with a target callable per box
  (its YOLO tutorial's approach: one forward and one backward per box).

    python benchmarks/bench_detection.py                # 320 x 320, 8 detections, CPU
    python benchmarks/bench_detection.py --device cuda --size 640 --detections 20
"""
from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from unittest import mock

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--detections", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from ultralytics.nn.tasks import DetectionModel

    import camkit
    from camkit.detection import DetectionScore, detector_of
    from camkit.explainers import detections as detections_module

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False).to(args.device).eval()
    for branch in model.model[-1].cv3:  # the prior bias keeps every random-init confidence near 1e-4
        torch.nn.init.zeros_(branch[-1].bias)
    x = torch.rand(1, 3, args.size, args.size, device=args.device)
    explainer = camkit.GradCAM(model, "model.15")
    detector = detector_of(model)
    result = explainer.explain_detections(x, score_threshold=0.0, max_detections=args.detections)
    chosen = list(zip(result.boxes[0], result.labels[0].tolist(), result.keys[0].tolist()))
    peer = PeerGradCAM(model=model, target_layers=[model.model[15]])

    def batched() -> None:
        explainer.explain_detections(x, score_threshold=0.0, max_detections=args.detections)

    def vmapped() -> None:
        with mock.patch.object(detections_module, "detection_gradients",
                               partial(detections_module.detection_gradients, vmapped=True)):
            batched()

    def separate() -> None:
        for box, label, key in chosen:
            explainer.explain(x, DetectionScore(detector, box, label, key))

    def peer_per_box() -> None:
        for _, label, key in chosen:
            # pytorch-grad-cam zips targets with the output's items: the first item is (1, 4 + classes, anchors).
            peer(input_tensor=x, targets=[lambda prediction, label=label, key=key: prediction[0, 4 + label, key]])

    variants = {"camkit batched": batched, "camkit batched, vmapped": vmapped,
                f"camkit, {len(chosen)} calls": separate, f"pytorch-grad-cam, {len(chosen)} calls": peer_per_box}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():
        run()  # warm-up
    for _ in range(args.repeats):
        for name, run in variants.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times[f"camkit, {len(chosen)} calls"])
    print(f"YOLOv8n, {args.size}x{args.size}, {len(chosen)} detections, Grad-CAM at model.15, {args.device}, "
          f"median of {args.repeats}, torch threads {torch.get_num_threads()}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<34} {median:7.3f} s   {median / base:5.2f}x of {len(chosen)} camkit calls")


if __name__ == "__main__":
    main()
