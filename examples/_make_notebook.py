"""Writes ``examples/colab_quickstart.ipynb`` from the cells below (run after editing them).

The notebook is generated so that it stays reviewable as plain Python in diffs, and so that
``tests/test_examples.py`` can check it is the output of this script. Run::

    python examples/_make_notebook.py

Settings the notebook reads from the environment (the test uses them; Colab users set
``DEEPLAB_TF_SOURCE`` in the install cell instead): ``DEEPLAB_TF_SOURCE`` (what to pip-install),
``DEEPLAB_TINY=1`` (2 training steps, 48-pixel images), ``DEEPLAB_OUT`` (output folder) and
``DEEPLAB_VOC_ROOT`` (a VOC + SBD tree for the optional VOC section).
"""

from __future__ import annotations

import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "colab_quickstart.ipynb")

CELLS = [
    (
        "md",
        """\
# DeepLab v2 in Keras 3: a quickstart

Chen et al., *DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs* (TPAMI 2017), with `deeplab_tf`:

1. build a DeepLabV2 model (atrous convolutions + ASPP);
2. train it with `model.fit` on built-in synthetic scenes (no download), and on PASCAL VOC if
   you mount it;
3. segment images with multi-scale inference and the fully connected CRF;
4. export a SavedModel for TF Serving.

On Colab, a GPU runtime (*Runtime > Change runtime type*) makes training faster, but every
cell also runs on a CPU in a few minutes.""",
    ),
    (
        "md",
        """\
## Install

Set `DEEPLAB_TF_SOURCE` to where `deeplab_tf` comes from: the repository's git URL
(`git+https://<host>/<owner>/deeplab_tf.git`), a checkout or wheel on a mounted Drive
(`/content/drive/MyDrive/deeplab_tf`), or leave it empty when this notebook runs inside a
checkout (`examples/` of the repository) or where `deeplab_tf` is already installed. The plain
install is all this notebook needs: TF Serving warm-up requests and LiteRT come with it.""",
    ),
    (
        "code",
        """\
import importlib.util
import os
import subprocess
import sys

DEEPLAB_TF_SOURCE = os.environ.get("DEEPLAB_TF_SOURCE", "")  # git URL, checkout, wheel, or ""


def deeplab_tf_source(source=DEEPLAB_TF_SOURCE, here="."):
    \"\"\"What to pip-install: the given source, the checkout around `here`, or None.\"\"\"
    if source:
        if source.startswith(("git+", "http://", "https://")):
            return source
        path = os.path.abspath(os.path.expanduser(source))
        if not os.path.exists(path):
            raise FileNotFoundError(f"DEEPLAB_TF_SOURCE={source!r}: no such file or folder")
        return path
    for folder in (here, os.path.join(here, "..")):
        cfg = os.path.join(folder, "setup.cfg")
        if os.path.isfile(cfg) and "name = deeplab_tf" in open(cfg).read():
            return os.path.abspath(folder)
    return None


def pip_command(spec):
    return [sys.executable, "-m", "pip", "install", "-q", spec]


spec = deeplab_tf_source()
if spec is not None:
    print("$", " ".join(pip_command(spec)))
    subprocess.run(pip_command(spec), check=True)
    importlib.invalidate_caches()
elif importlib.util.find_spec("deeplab_tf") is None:
    raise RuntimeError(
        "deeplab_tf is not installed and this notebook is not inside a checkout: set "
        "DEEPLAB_TF_SOURCE above to the repository's git URL, a checkout or a wheel."
    )""",
    ),
    (
        "code",
        """\
import matplotlib.pyplot as plt

import deeplab_tf

# DEEPLAB_TINY=1 shrinks everything to seconds (used by the project's tests).
TINY = os.environ.get("DEEPLAB_TINY") == "1"
OUT = os.environ.get("DEEPLAB_OUT", "deeplab_colab")
STEPS = 2 if TINY else 300  # training steps on the synthetic scenes
SIZE = 48 if TINY else 64  # image side
NUM_TRAIN = 8 if TINY else 512
NUM_CLASSES = 5  # background + 4 shapes
os.makedirs(OUT, exist_ok=True)
where = os.path.dirname(deeplab_tf.__file__)
print("deeplab_tf", deeplab_tf.__version__, "imported from", where)
print("tiny run" if TINY else "full run")""",
    ),
    (
        "md",
        """\
## Build a model

`DeepLabV2` returns a functional `keras.Model` that takes RGB images with values 0..255 (any
size; preprocessing is inside the model) and returns class scores at 1/8 of the input
resolution. The paper's main model is `DeepLabV2("resnet101", "aspp_l")`; here the small
MobileNetV2 backbone with a two-branch ASPP head trains from scratch in minutes.""",
    ),
    (
        "code",
        """\
model = deeplab_tf.DeepLabV2(
    backbone="mobilenetv2",
    head="aspp",
    rates=(1, 2),
    num_classes=NUM_CLASSES,
    freeze_batchnorm=False,  # training from scratch; the paper freezes ImageNet BatchNorm
)
print(model.name, f"{model.count_params():,} parameters")
print("input", model.input_shape, "-> logits", model.output_shape)""",
    ),
    ("md", "## Train with `model.fit` on synthetic scenes"),
    (
        "code",
        """\
import keras

from deeplab_tf.data.synthetic import synthetic_dataset
from deeplab_tf.training import DeepLabLoss, MeanIoU, PolyDecay, train_pipeline

train_ds, info = synthetic_dataset("train", NUM_TRAIN, SIZE, NUM_CLASSES)
val_ds, _ = synthetic_dataset("val", 16, SIZE, NUM_CLASSES)
print(info.class_names)

# Random scale, crop and flip; labels keep 255 = ignore. Images stay RGB 0..255.
batches = train_pipeline(train_ds, crop_size=SIZE, batch_size=8, scales=(0.75, 1.0, 1.25))
model.compile(
    # From scratch, Adam on the paper's "poly" schedule; fine-tuning an ImageNet backbone
    # uses the paper's solver instead: model.compile(**deeplab_tf.recipes.paper(model)).
    optimizer=keras.optimizers.Adam(PolyDecay(3e-3, STEPS, 0.9)),
    loss=DeepLabLoss(),  # cross-entropy over valid pixels, labels shrunk to the score grid
    metrics=[MeanIoU(NUM_CLASSES)],
)
history = model.fit(batches, steps_per_epoch=STEPS, epochs=1, verbose=2 if TINY else 1)""",
    ),
    (
        "code",
        """\
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(history.history["loss"], marker="o", label="loss")
ax.plot(history.history["mean_iou"], marker="o", label="mean IoU (train)")
ax.set_xlabel("epoch")
ax.legend()
plt.show()""",
    ),
    (
        "md",
        """\
## Optional: PASCAL VOC 2012 with the paper's recipe

Mount a folder holding `VOCdevkit/VOC2012` and `benchmark_RELEASE` (SBD) and set `VOC_ROOT`.
The recipe (`deeplab_tf.recipes.paper`) is the authors' solver: SGD with momentum 0.9, weight
decay 5e-4, learning rate 2.5e-4 with poly decay and x10/x20 on the classifier. The full run is
20,000 steps on a GPU (`examples/train_voc.py`); this cell runs a short one.""",
    ),
    (
        "code",
        """\
# from google.colab import drive; drive.mount("/content/drive")
VOC_ROOT = os.environ.get("DEEPLAB_VOC_ROOT", "/content/drive/MyDrive/data")

if os.path.isdir(os.path.join(VOC_ROOT, "VOCdevkit")):
    voc_train, voc_info = deeplab_tf.load_dataset("voc2012_aug", "train_aug", root=VOC_ROOT)
    voc_model = deeplab_tf.DeepLabV2(
        backbone="mobilenetv2" if TINY else "resnet101",
        head="aspp_l",
        num_classes=voc_info.num_classes,
        weights=None if TINY else "imagenet",  # ImageNet backbone, as in the paper
    )
    voc_steps = 2 if TINY else 1000
    voc_model.compile(**deeplab_tf.recipes.paper(voc_model, steps=voc_steps))
    voc_batches = train_pipeline(voc_train, crop_size=SIZE if TINY else 321, batch_size=2)
    voc_model.fit(voc_batches, steps_per_epoch=voc_steps, epochs=1, verbose=2 if TINY else 1)
else:
    print(f"No VOC tree at {VOC_ROOT!r}; skipping the VOC section.")""",
    ),
    (
        "md",
        """\
## Segment: multi-scale inference and the dense CRF

`MultiScaleInference` runs the model at scales 1, 0.75 and 0.5, fuses the scores with a max
(the paper) and returns probabilities at the image's resolution. `DenseCRF` then refines them
with the fully connected CRF (a permutohedral-lattice mean field in TensorFlow ops).""",
    ),
    (
        "code",
        """\
from deeplab_tf.data.synthetic import synthetic_arrays
from deeplab_tf.visualize import overlay

images, truth, _ = synthetic_arrays("samples", 3, SIZE + 16, NUM_CLASSES, seed=2)
msc = deeplab_tf.MultiScaleInference(model, scales=(1.0, 0.75, 0.5))
crf = deeplab_tf.DenseCRF.from_preset("mobilenetv2", iterations=2 if TINY else 10)
probs = msc.predict(images, verbose=0)  # (N, H, W, C)
refined = crf(images, probs).numpy()
before, after = probs.argmax(-1), refined.argmax(-1)
valid = truth != 255
print(
    f"pixel accuracy: {(before == truth)[valid].mean():.3f} before CRF, "
    f"{(after == truth)[valid].mean():.3f} after"
)

fig, axes = plt.subplots(len(images), 3, figsize=(9, 3 * len(images)), squeeze=False)
for row, (image, b, a) in enumerate(zip(images, before, after)):
    for ax, (title, pic) in zip(
        axes[row],
        [
            ("image", image),
            ("MSC", overlay(image, b, info.palette)),
            ("MSC + CRF", overlay(image, a, info.palette)),
        ],
    ):
        ax.imshow(pic)
        ax.set_title(title)
        ax.axis("off")
fig.savefig(os.path.join(OUT, "samples.png"))
plt.show()""",
    ),
    (
        "md",
        """\
## Export for TF Serving

The SavedModel keeps the preprocessing, the upsampling and (here) the CRF inside the graph.
Its signatures are `serving_default` (float images), `serving_uint8`, `serving_bytes` (encoded
JPEG/PNG files, the REST `{"b64": ...}` form) and `serving_crf`; `examples/serve.md` shows the
Docker command and REST/gRPC requests. `deeplab-tf export model.keras --out DIR --tflite fp32`
writes TFLite files too.""",
    ),
    (
        "code",
        """\
import tensorflow as tf

path = deeplab_tf.export_saved_model(
    model, os.path.join(OUT, "serving"), crf=crf, overwrite=True, version=1
)  # with TF Serving warm-up requests (assets.extra/)
print("SavedModel:", path)

loaded = tf.saved_model.load(path)
png = tf.io.encode_png(images[0]).numpy()
result = loaded.signatures["serving_bytes"](image_bytes=tf.constant([png]))
served = result["labels"].numpy()[0]
direct = deeplab_tf.MultiScaleInference(model, scales=(1.0,))(images[:1]).numpy().argmax(-1)[0]
print("outputs:", sorted(result))
print(f"served labels {served.shape}: {(served == direct).mean():.1%} equal to Keras's")
model.save(os.path.join(OUT, "model.keras"))  # for `deeplab-tf predict --model ...`""",
    ),
]


def build() -> nbformat.NotebookNode:
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "colab": {"provenance": [], "name": "colab_quickstart.ipynb"},
            "accelerator": "GPU",
        },
    )
    # Stable cell ids keep regenerated notebooks byte-identical.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def main(argv=None) -> int:
    nb = build()
    nbformat.validate(nb)
    text = nbformat.writes(nb)
    target = (argv or sys.argv[1:] or [NOTEBOOK])[0]
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, target)
    print(f"wrote {target} ({len(nb.cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
