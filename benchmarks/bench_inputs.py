"""inputs= against the wrapper a user would write: passing the model's other inputs costs nothing measurable.

Both sides run in one process, interleaved, on the same model and data: a
ViLT-style question-answering model built from a config (no download) explains
``--batch`` images with one question each, by Grad-CAM (one call) and by
Score-CAM (copies of the batch, so the per-image questions are sliced with the
images), and by two pixel methods: Saliency (one call) and integrated gradients
(the path's copies carry their images' questions). The wrapper closes over the questions of a batch of one image, so it
is timed image by image, as a user would have to run it for copying methods;
for Grad-CAM it is also timed on the whole batch. Median of ``--repeats``.

    python benchmarks/bench_inputs.py                 # CPU, batch 4, 64 x 64
    python benchmarks/bench_inputs.py --device cuda --batch 16
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import camkit

LAYER = "vilt.embeddings.patch_embeddings.projection"


class Closed(nn.Module):
    def __init__(self, model: nn.Module, question: torch.Tensor) -> None:
        super().__init__()
        self.model, self.question = model, question

    def forward(self, x: torch.Tensor):
        question = self.question if self.question.shape[0] == x.shape[0] else self.question.expand(x.shape[0], -1)
        return self.model(pixel_values=x, input_ids=question)


def timed(run: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import transformers

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = transformers.ViltConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, vocab_size=100, max_position_embeddings=16,
                                     image_size=args.size, patch_size=16, num_labels=10, max_image_length=-1)
    model = transformers.ViltForQuestionAnswering(config).eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    questions = torch.randint(0, 100, (args.batch, 8), device=device)
    rows = range(args.batch)
    cases = {
        "Grad-CAM, batch": (
            lambda: camkit.GradCAM(model, LAYER)(x, inputs={"input_ids": questions}),
            lambda: camkit.GradCAM(Closed(model, questions), "model." + LAYER)(x)),
        "Grad-CAM, image by image": (
            lambda: [camkit.GradCAM(model, LAYER)(x[i:i + 1], inputs={"input_ids": questions[i:i + 1]}) for i in rows],
            lambda: [camkit.GradCAM(Closed(model, questions[i:i + 1]), "model." + LAYER)(x[i:i + 1]) for i in rows]),
        "Score-CAM (top 16 channels), batch vs wrapper image by image": (
            lambda: camkit.ScoreCAM(model, LAYER, top_channels=16)(x, inputs={"input_ids": questions}),
            lambda: [camkit.ScoreCAM(Closed(model, questions[i:i + 1]), "model." + LAYER, top_channels=16)(x[i:i + 1])
                     for i in rows]),
        "Saliency (pixel method), batch": (
            lambda: camkit.Saliency(model)(x, inputs={"input_ids": questions}),
            lambda: camkit.Saliency(Closed(model, questions))(x)),
        "Integrated gradients (16 steps), batch vs wrapper image by image": (
            lambda: camkit.IntegratedGradients(model, steps=16)(x, inputs={"input_ids": questions}),
            lambda: [camkit.IntegratedGradients(Closed(model, questions[i:i + 1]), steps=16)(x[i:i + 1])
                     for i in rows]),
    }
    print(f"device {device}, batch {args.batch}, {args.size} x {args.size}, median of {args.repeats}")
    for name, (ours, wrapper) in cases.items():
        ours(), wrapper()  # warm up
        times: dict[str, list[float]] = {"inputs=": [], "wrapper": []}
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            times["inputs="].append(timed(ours, device))
            times["wrapper"].append(timed(wrapper, device))
        first, second = statistics.median(times["inputs="]), statistics.median(times["wrapper"])
        print(f"{name:<62} inputs= {first * 1000:8.1f} ms   wrapper {second * 1000:8.1f} ms   ratio {first / second:.2f}")


if __name__ == "__main__":
    main()
