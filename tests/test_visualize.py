"""Palette PNGs, overlays and side-by-side panels."""

import os

import numpy as np
import pytest
from PIL import Image

from deeplab_tf.data.palettes import VOC_CLASSES, voc_palette
from deeplab_tf.visualize import (
    boundaries,
    label_image,
    overlay,
    save_label_png,
    save_rgb_png,
    side_by_side,
)


@pytest.fixture
def scene():
    h, w = 48, 64
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([80 + yy, 120 + xx, 200 - yy], -1).astype(np.uint8)
    label = np.zeros((h, w), np.uint8)
    label[10:30, 8:28] = 15  # person
    label[30:44, 36:60] = 7  # car
    return image, label


def test_label_png_is_voc_style_palette_png(scene, tmp_path):
    _, label = scene
    label = label.copy()
    label[0, :5] = 255
    path = save_label_png(tmp_path / "a.png", label)
    img = Image.open(path)
    assert img.mode == "P" and img.format == "PNG"
    np.testing.assert_array_equal(np.asarray(img), label)  # pixel value = class id
    pal = np.asarray(img.getpalette(), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(pal[:256], voc_palette())
    np.testing.assert_array_equal(np.asarray(img.convert("RGB"))[12, 10], voc_palette()[15])
    assert os.listdir(tmp_path) == ["a.png"]  # no temporary files left behind


def test_overlay_tints_classes_and_leaves_background(scene):
    image, label = scene
    out = overlay(image, label, alpha=0.5, outline=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    bg = label == 0
    np.testing.assert_array_equal(out[bg], image[bg])
    want = np.round(0.5 * image[label == 15] + 0.5 * voc_palette()[15].astype(float))
    np.testing.assert_allclose(out[label == 15], want, atol=1)
    edged = overlay(image, label, alpha=0.5)
    edge = boundaries(label) & (label > 0)
    np.testing.assert_array_equal(edged[edge], voc_palette()[label[edge]])
    np.testing.assert_array_equal(overlay(image, label, alpha=0.0, outline=False), image)


def test_boundaries():
    lab = np.zeros((5, 5), int)
    lab[2, 2] = 1
    edge = boundaries(lab)
    assert edge.sum() == 5 and edge[2, 2] and edge[1, 2] and edge[2, 3] and not edge[0, 0]


def test_side_by_side_layout(scene, tmp_path):
    image, label = scene
    gt = label.copy()
    gt[28:32] = 255
    panel = side_by_side(image, label, gt, class_names=VOC_CLASSES, min_height=96)
    factor = 2  # 48 px enlarged to >= 96
    h, w = 48 * factor, 64 * factor
    assert panel.dtype == np.uint8 and panel.shape[0] > h and panel.shape[1] == 3 * w + 4 * 6
    # The prediction panel holds the enlarged colour map (nearest neighbour).
    x0 = 6 + w + 6
    top = panel.shape[0] - h
    crop = panel[22 : 22 + h, x0 : x0 + w]
    np.testing.assert_array_equal(crop[::factor, ::factor], voc_palette()[label])
    assert top > 22  # room for the title row and the legend
    without_gt = side_by_side(image, label, legend=False, min_height=10)
    assert without_gt.shape[1] == 2 * 64 + 3 * 6
    path = save_rgb_png(tmp_path / "sbs.png", panel)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), panel)


def test_bad_inputs(scene):
    image, label = scene
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, label[:10])
    with pytest.raises(ValueError, match="Received"):
        overlay(image[..., 0], label)
    with pytest.raises(ValueError, match="Received"):
        overlay(image, label, alpha=2)
    with pytest.raises(ValueError, match="Received"):
        label_image(np.full((3, 3), 300))
    with pytest.raises(ValueError, match="Received"):
        label_image(np.zeros((3, 3)), palette=np.zeros((4, 4)))
