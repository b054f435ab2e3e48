"""Train camkit's bundled demo model (CPU, a few minutes) and record its held-out accuracy.

    python scripts/train_demo.py            # writes camkit/weights/demo.pt, demo_metrics.json, assets/samples/
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from camkit.app.demo import DEMO_SIZE, DemoNet, demo_preprocess, make_demo_dataset

ROOT = Path(__file__).resolve().parent.parent
EPOCHS, TRAIN, TEST, SAMPLE_SIZE = 8, 12000, 2000, 256


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    start = time.time()
    train_images, train_labels, _ = make_demo_dataset(TRAIN, seed=0, split="train")
    test_images, test_labels, _ = make_demo_dataset(TEST, seed=1, split="test")
    print(f"data: {time.time() - start:.0f} s")
    inputs = demo_preprocess(train_images)
    model = DemoNet()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = EPOCHS * (TRAIN // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(TRAIN)
        for batch in order[: TRAIN // 128 * 128].split(128):
            # Colour jitter only: a flip would mirror the digit and change its class.
            x = inputs[batch] * (1 + 0.2 * (torch.rand(len(batch), 3, 1, 1) - 0.5))
            loss = F.cross_entropy(model(x), train_labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        accuracy = evaluate(model, test_images, test_labels)
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, held-out accuracy {accuracy:.3f}, {time.time() - start:.0f} s")

    weights_dir = ROOT / "camkit" / "weights"
    weights_dir.mkdir(exist_ok=True)
    torch.save({name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in model.state_dict().items()},
               weights_dir / "demo.pt")
    model.load_state_dict({name: tensor.half().float() if tensor.is_floating_point() else tensor
                           for name, tensor in model.state_dict().items()})
    accuracy = evaluate(model, test_images, test_labels)
    metrics = {
        "test_accuracy": round(accuracy, 4), "n_train": TRAIN, "n_test": TEST, "epochs": EPOCHS,
        "seconds": round(time.time() - start), "torch": torch.__version__, "input_size": DEMO_SIZE,
        "weights": "float16 state_dict",
    }
    (weights_dir / "demo_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(metrics)
    write_samples(model)


@torch.no_grad()
def evaluate(model: DemoNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    predictions = torch.cat([model(demo_preprocess(chunk)).argmax(1) for chunk in images.split(500)])
    return (predictions == labels).float().mean().item()


def write_samples(model: DemoNet) -> None:
    """Eight held-out images at 256x256 for the README's first command, with their boxes."""
    folder = ROOT / "assets" / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels, boxes = make_demo_dataset(8, seed=2024, split="test", size=SAMPLE_SIZE)
    small = F.interpolate(images.float(), size=(DEMO_SIZE, DEMO_SIZE), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        predicted = model.eval()(demo_preprocess(small.round())).argmax(1)
    rows = []
    for i, (image, label, box) in enumerate(zip(images, labels.tolist(), boxes.tolist())):
        name = f"sample{i}_digit{label}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / name)
        rows.append([name, label, *box])
        print(name, "predicted", int(predicted[i]))
    with open(folder / "boxes.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "x0", "y0", "x1", "y1"])
        writer.writerows(rows)


if __name__ == "__main__":
    main()
