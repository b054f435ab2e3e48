"""Loading models by name: timm architectures with local checkpoints, never a download."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

import camkit
from camkit.app.models import load_model
from camkit.cli import main


timm = pytest.importorskip("timm")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def convnext_checkpoint(tmp_path_factory):
    """A fine-tuned convnext_atto's state dict (3 classes), as a user saves it, and the model itself."""
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=3).eval()
    path = tmp_path_factory.mktemp("weights") / "convnext_atto_3classes.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path, model


def test_a_timm_name_loads_a_local_checkpoint_with_its_class_count(offline, convnext_checkpoint) -> None:
    path, saved = convnext_checkpoint
    loaded = load_model("convnext_atto", str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), saved(x))
    config = saved.pretrained_cfg
    assert loaded.input_size == tuple(config["input_size"][1:]) and loaded.mean == tuple(config["mean"])
    assert not loaded.model.training


def test_timm_weights_are_never_downloaded(offline, convnext_checkpoint) -> None:
    with pytest.raises(camkit.CamkitError, match="does not download timm weights.*--weights"):
        load_model("convnext_atto", None)
    with pytest.raises(camkit.CamkitError, match="DEFAULT is not a file.*never downloads"):
        load_model("convnext_atto", "DEFAULT")
    with pytest.raises(camkit.CamkitError, match="do not fit timm's levit_128s"):
        load_model("levit_128s", str(convnext_checkpoint[0]))
    with pytest.raises(camkit.CamkitError, match="Hugging Face Hub"):
        load_model("timm:hf-hub:timm/convnext_atto.d2_in1k", str(convnext_checkpoint[0]))


def test_timm_prefix_loads_timm_where_torchvision_has_the_name(offline, tmp_path) -> None:
    model = timm.create_model("resnet18", pretrained=False, num_classes=4)
    torch.save(model.state_dict(), tmp_path / "r18.pt")
    loaded = load_model("timm:resnet18", str(tmp_path / "r18.pt"))
    assert type(loaded.model).__module__.startswith("timm.") and loaded.model.num_classes == 4


def test_overlay_explains_a_timm_model_from_a_local_checkpoint(offline, convnext_checkpoint, tmp_path) -> None:
    image = tmp_path / "in" / "photo.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    status = main(["overlay", str(image), "-o", str(out), "--model", "convnext_atto", "--weights",
                   str(convnext_checkpoint[0]), "--input-size", "64", "--workers", "0", "--quiet"])
    assert status == 0
    written = Image.open(out / "photo_gradcam.png")
    assert written.size[0] == 50 and written.size[1] > 40  # the overlay, then its caption strip
