"""crf-search: the grid search core and the deeplab-tf crf-search command."""

import json

import numpy as np
import pytest
from PIL import Image

from deeplab_tf.crf.search import confusion, format_table, grid_search, mean_iou
from tests._crf_utils import PHOTOS, coarse_probs, load_photo


def _samples(classes=4):
    out = []
    for name in PHOTOS:
        image = load_photo(name)
        probs, _ = coarse_probs(image, classes=classes)
        # Ground truth: the same colour quantisation at full resolution (sharp boundaries).
        _, fine = coarse_probs(image, classes=classes, block=1)
        fine[:2] = 255  # a strip of ignored pixels
        out.append((image, probs, fine))
    return out


def test_confusion_and_mean_iou_match_a_direct_count():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(20, 30))
    label[0] = 255
    pred = rng.integers(0, 4, size=(20, 30))
    conf = confusion(pred, label, 4)
    valid = label != 255
    ious = []
    for c in range(4):
        inter = np.sum((pred == c) & (label == c) & valid)
        union = np.sum(((pred == c) | (label == c)) & valid)
        ious.append(inter / union)
    assert conf.sum() == valid.sum()
    assert mean_iou(conf) == pytest.approx(100 * np.mean(ious))


@pytest.mark.large
def test_grid_search_scores_every_setting_and_picks_the_best():
    samples = _samples()
    result = grid_search(
        samples, num_classes=4, bi_w=[0.0, 5.0], bi_xy_std=[30.0], bi_rgb_std=[3.0, 10.0],
        preset="resnet101", iterations=5,
    )  # fmt: skip
    assert result["num_images"] == 2
    assert len(result["settings"]) == 4
    mious = [s["miou"] for s in result["settings"]]
    assert result["best"]["miou"] == max(mious)
    assert all(0.0 <= m <= 100.0 for m in mious)
    # Scores are the CRF's own: recompute one setting directly.
    from deeplab_tf.crf import DenseCRF

    crf = DenseCRF.from_preset("resnet101", bi_w=5.0, bi_xy_std=30.0, bi_rgb_std=3.0, iterations=5)
    conf = sum(confusion(crf.labels(i, p).numpy(), lab, 4) for i, p, lab in samples)
    entry = [s for s in result["settings"] if s["bi_w"] == 5.0 and s["bi_rgb_std"] == 3.0][0]
    assert entry["miou"] == pytest.approx(mean_iou(conf))
    assert "*" in format_table(result)


def test_grid_search_errors():
    with pytest.raises(ValueError, match="at least one sample"):
        grid_search([], num_classes=4)
    image = load_photo(PHOTOS[1])
    probs, lab = coarse_probs(image, classes=4)
    with pytest.raises(ValueError, match="Received"):
        grid_search([(image, probs[..., :3], lab)], num_classes=4)
    with pytest.raises(ValueError, match="bi_w"):
        grid_search([(image, probs, lab)], num_classes=4, bi_w=[])


@pytest.mark.large
def test_crf_search_command_on_image_and_mask_folders(tmp_path, capsys):
    from deeplab_tf import DeepLabV2
    from deeplab_tf.cli import main

    model = DeepLabV2(backbone="vgg16", head="largefov", num_classes=3)
    model_path = str(tmp_path / "tiny.keras")
    model.save(model_path)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(load_photo(PHOTOS[1])[:40, 8 * k : 8 * k + 48]).save(images / f"{k}.png")
        Image.fromarray(rng.integers(0, 3, size=(40, 48), dtype=np.uint8)).save(masks / f"{k}.png")
    out = tmp_path / "search.json"
    argv = [
        "crf-search", "--model", model_path, "--images", str(images), "--masks", str(masks),
        "--bi-w", "3,5", "--bi-xy-std", "30", "--bi-rgb-std", "4", "--output", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert len(result["settings"]) == 2 and result["num_images"] == 2
    assert "best:" in capsys.readouterr().out
    # Outputs never replace an existing file unless asked, nor an input even when asked.
    capsys.readouterr()
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    mask = (masks / "0.png").read_bytes()
    assert main([*argv[:-1], str(masks / "0.png"), "--overwrite"]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert (masks / "0.png").read_bytes() == mask
    assert main([*argv[:-1], model_path, "--overwrite"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    # User errors are reported cleanly.
    assert main(["crf-search", "--model", model_path, "--images", str(images)]) == 2
    assert main(["crf-search", "--model", str(tmp_path / "missing.keras"), "--dataset", "x"]) == 2
