"""Fake dataset trees mirroring the real archive layouts, for the data tests.

Every writer returns the arrays it wrote so tests can compare exact pixel values after loading.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from deeplab_tf.data.palettes import voc_palette


def smooth_image(rng, h, w):
    """An RGB image smooth enough that a quality-100 JPEG stays within a few levels."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    img = np.stack(
        [base[c] + 30 * np.sin(xx / (5 + 2 * c)) + 20 * np.cos(yy / (7 + c)) for c in range(3)],
        axis=-1,
    )
    return np.clip(img, 0, 255).astype(np.uint8)


def write_jpeg(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=100, subsampling=0)


def write_png(path, array, palette=None):
    """Writes a grey (L) PNG, or a palette (P) PNG when ``palette`` is given."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(np.asarray(array, np.uint8), mode="L")
    if palette is not None:
        img = img.convert("P")
        img.putpalette(np.asarray(palette, np.uint8).ravel().tolist())
    img.save(path, format="PNG")


def random_label(rng, h, w, values, border=True):
    """A label map drawn from ``values`` with a 255 boundary stripe (like VOC's)."""
    label = rng.choice(np.asarray(values), size=(h, w)).astype(np.uint8)
    if border:
        label[:, w // 2] = 255
    return label


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"{x}\n" for x in lines))


def make_voc(root, train, val, rng, size=(20, 24), num_classes=21):
    """``VOCdevkit/VOC2012`` with JPEGImages, palette SegmentationClass PNGs, split lists."""
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    written = {}
    for i in sorted(set(train) | set(val)):
        h, w = size
        image = smooth_image(rng, h, w)
        label = random_label(rng, h, w, range(num_classes))
        write_jpeg(os.path.join(voc, "JPEGImages", f"{i}.jpg"), image)
        write_png(os.path.join(voc, "SegmentationClass", f"{i}.png"), label, voc_palette())
        written[i] = (image, label)
    sets = os.path.join(voc, "ImageSets", "Segmentation")
    write_lines(os.path.join(sets, "train.txt"), train)
    write_lines(os.path.join(sets, "val.txt"), val)
    write_lines(os.path.join(sets, "trainval.txt"), list(train) + list(val))
    return voc, written


def write_sbd_mat(path, seg):
    """An SBD ``cls/*.mat``: struct ``GTcls`` with Boundaries, Segmentation, CategoriesPresent."""
    import scipy.io

    os.makedirs(os.path.dirname(path), exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = np.zeros(seg.shape, np.uint8)
    present = np.unique(seg[(seg > 0) & (seg < 255)]).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(
        path,
        {
            "GTcls": {
                "Boundaries": boundaries,
                "Segmentation": np.asarray(seg, np.uint8),
                "CategoriesPresent": present,
            }
        },
    )


def make_sbd(root, train, val, rng, size=(20, 24), images=None):
    """``benchmark_RELEASE/dataset`` with cls/*.mat, img/*.jpg and train/val lists."""
    ds = os.path.join(root, "benchmark_RELEASE", "dataset")
    written = {}
    for i in sorted(set(train) | set(val)):
        h, w = size
        seg = rng.integers(0, 21, size=(h, w)).astype(np.uint8)  # SBD: no 255 boundaries
        write_sbd_mat(os.path.join(ds, "cls", f"{i}.mat"), seg)
        if images is not None and i in images:
            write_jpeg(os.path.join(ds, "img", f"{i}.jpg"), images[i])
        written[i] = seg
    write_lines(os.path.join(ds, "train.txt"), train)
    write_lines(os.path.join(ds, "val.txt"), val)
    return ds, written


def make_cityscapes(root, split, names, labels, rng):
    """``leftImg8bit/<split>/<city>/..._leftImg8bit.png`` + ``gtFine/..._gtFine_labelIds.png``."""
    images = {}
    for name, label in zip(names, labels):
        city = name.split("_")[0]
        h, w = label.shape
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(
            _mkdir(os.path.join(root, "leftImg8bit", split, city, f"{name}_leftImg8bit.png"))
        )
        write_png(os.path.join(root, "gtFine", split, city, f"{name}_gtFine_labelIds.png"), label)
        images[name] = image
    return images


def _mkdir(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def write_context_mat(path, label_map):
    """A PASCAL-Context ``trainval/*.mat``: ``LabelMap`` of 459-class ids (uint16)."""
    import scipy.io

    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, {"LabelMap": np.asarray(label_map, np.uint16)})


def write_pascal_part_mat(path, imname, objects):
    """A PASCAL-Part ``Annotations_Part/*.mat``.

    Args:
        objects: list of ``(class_name, object_mask, [(part_name, part_mask), ...])``.
    """
    import scipy.io

    os.makedirs(os.path.dirname(path), exist_ok=True)
    objs = np.empty(
        (1, len(objects)),
        dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")],
    )
    for k, (cls, mask, parts) in enumerate(objects):
        parr = np.empty((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
        for j, (pname, pmask) in enumerate(parts):
            parr[0, j] = (pname, np.asarray(pmask, np.uint8))
        objs[0, k] = (cls, np.array([[15]], np.uint8), np.asarray(mask, np.uint8), parr)
    scipy.io.savemat(path, {"anno": {"imname": imname, "objects": objs}})


def make_folder_dataset(root, num_images, size, num_classes, seed=0):
    """A ``folder`` dataset under ``root``: ``images/im{i}.png`` (random RGB) and
    ``masks/im{i}.png`` (labels ``0..num_classes-1``) of ``size = (h, w)``; returns ``root``."""
    rng = np.random.default_rng(seed)
    h, w = size
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(num_images):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(root, "images", f"im{i}.png"))
        mask = rng.integers(0, num_classes, (h, w), dtype=np.uint8)
        Image.fromarray(mask).save(os.path.join(root, "masks", f"im{i}.png"))
    return root


def write_cocostuff_mat(path, s, dtype=np.uint16):
    """A COCO-Stuff 10k ``annotations/*.mat`` (MATLAB v5, as the release): ``S`` (1-based ids,
    0 = unlabeled) plus the release's other variables."""
    import scipy.io

    os.makedirs(os.path.dirname(path), exist_ok=True)
    names = np.empty((1, 2), dtype=object)
    names[0, 0], names[0, 1] = "unlabeled", "person"
    scipy.io.savemat(
        path,
        {
            "S": np.asarray(s, dtype),
            "names": names,
            "captions": np.array(["a caption"], dtype=object),
            "regionMapStuff": np.zeros(np.shape(s), np.uint16),
            "regionLabelsStuff": np.zeros((3, 1), np.uint8),
        },
    )


def write_mat_v73(path, variables):
    """A MATLAB v7.3 ``.mat``: an HDF5 file behind MATLAB's 512-byte header, arrays stored
    column-major (h5py sees them transposed), as MATLAB's ``save -v7.3`` writes them."""
    import h5py

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, value in variables.items():
            f.create_dataset(key, data=np.asarray(value).T)
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 "
    text += b"HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header)


def make_cocostuff10k(root, train, test, rng, size=(12, 16)):
    """``images/*.jpg``, ``annotations/*.mat`` (``S``: 0 = unlabeled, 1..182) and
    ``imageLists/{train,test,all}.txt``; returns ``{name: (image, S)}``."""
    written = {}
    for name in list(train) + list(test):
        h, w = size
        image = smooth_image(rng, h, w)
        s = rng.integers(0, 183, size=(h, w))
        s[0, :3] = [0, 1, 182]
        write_jpeg(os.path.join(root, "images", f"{name}.jpg"), image)
        write_cocostuff_mat(os.path.join(root, "annotations", f"{name}.mat"), s)
        written[name] = (image, s)
    write_lines(os.path.join(root, "imageLists", "train.txt"), train)
    write_lines(os.path.join(root, "imageLists", "test.txt"), test)
    write_lines(os.path.join(root, "imageLists", "all.txt"), list(train) + list(test))
    return written


def make_cocostuff164k(root, split, stems, rng, size=(10, 14)):
    """``images/<split>/*.jpg`` + ``annotations/<split>/*.png`` (ids 0..181, 255)."""
    written = {}
    for stem in stems:
        h, w = size
        image = smooth_image(rng, h, w)
        label = rng.choice(np.r_[np.arange(182), 255], size=(h, w)).astype(np.uint8)
        label[0, :3] = [0, 181, 255]
        write_jpeg(os.path.join(root, "images", split, f"{stem}.jpg"), image)
        write_png(os.path.join(root, "annotations", split, f"{stem}.png"), label)
        written[stem] = (image, label)
    return written


def rare_foreground_arrays(n, size=48, seed=0, contrast=40.0, radius=(3.0, 5.0), noise=12.0):
    """A two-class set where the foreground is rare: one small disk per image.

    Background: a random colour with a gradient (as :mod:`deeplab_tf.data.synthetic` draws
    it) plus Gaussian noise; foreground: a disk of ``radius`` pixels whose colour is shifted by
    ``contrast`` (``+, -, +`` on R, G, B, with a per-disk jitter), outlined by a one-pixel 255
    band. With the defaults about 1.3% of the labelled pixels are foreground.

    Returns:
        ``(images uint8 (n, size, size, 3), labels uint8 (n, size, size), ids list[str])``.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        base = rng.uniform(70, 150, 3)
        grad = rng.uniform(-30, 30, (2, 3))
        image = base + (yy / size)[..., None] * grad[0] + (xx / size)[..., None] * grad[1]
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(r, size - r, 2)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        disk = d2 <= r * r
        image[disk] += contrast * np.array([1.0, -1.0, 1.0]) + rng.uniform(-10, 10, 3)
        image += rng.normal(0.0, noise, image.shape)
        images[i] = np.clip(np.round(image), 0, 255)
        labels[i][disk] = 1
        labels[i][(d2 <= (r + 1) ** 2) & (d2 > (r - 1) ** 2)] = 255
    return images, labels, [f"rare_{seed}_{i:04d}" for i in range(n)]
