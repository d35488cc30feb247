"""Shared helpers for the dense CRF tests: real photo fixtures and coarse label maps."""

import os

import numpy as np
from PIL import Image

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
PHOTOS = ("astronaut_96.png", "chelsea_96x64.png")


def load_photo(name):
    return np.array(Image.open(os.path.join(FIXTURES, name)).convert("RGB"), dtype=np.uint8)


def coarse_probs(image, classes=21, block=8, confidence=0.15, seed=0):
    """A coarse, blocky label map derived from the photo (colour quantised at 1/block
    resolution, upsampled by nearest) turned into soft probabilities, like a DCNN's
    stride-8 output: the CRF has real boundaries to move."""
    rng = np.random.default_rng(seed)
    h, w, _ = image.shape
    small = image[block // 2 :: block, block // 2 :: block].astype(np.float32)
    # Quantise colour into `classes` bins by a random projection.
    proj = small @ rng.normal(size=(3,)).astype(np.float32)
    edges = np.quantile(proj, np.linspace(0, 1, classes + 1)[1:-1])
    labels_small = np.digitize(proj, edges)
    labels = np.kron(labels_small, np.ones((block, block), int))[:h, :w]
    pad_h, pad_w = h - labels.shape[0], w - labels.shape[1]
    labels = np.pad(labels, ((0, pad_h), (0, pad_w)), mode="edge")
    noise = rng.uniform(0.0, 1.0, size=(h, w, classes)).astype(np.float32)
    probs = (1.0 - confidence) * noise / noise.sum(-1, keepdims=True)
    onehot = np.eye(classes, dtype=np.float32)[labels]
    probs = probs + confidence * onehot
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32), labels
