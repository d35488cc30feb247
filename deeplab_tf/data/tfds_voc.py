"""A TFDS builder for VOC 2012 segmentation and its SBD augmentation (manual_dir).

TFDS's own ``voc`` holds detection boxes only. This builder reads the extracted archives the
user already has (the same layouts as :mod:`deeplab_tf.data.voc`) from its ``manual_dir`` and
prepares them once into TFRecords; afterwards ``tfds.load`` reads the records::

    import deeplab_tf.data.tfds_voc  # registers "deeplab_voc2012"
    ds = tfds.load(
        "deeplab_voc2012/aug", split="train_aug",
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir="~/data")},
    )

Configs: ``segmentation`` (train 1,464 / val 1,449 / trainval 2,913) and ``aug`` (train_aug
10,582 / val 1,449). Images keep their original JPEG bytes; labels are stored as 1-channel
PNGs of class ids (255 = ignore), decoded and validated once while preparing.
"""

from __future__ import annotations

import os

try:
    import tensorflow_datasets as tfds
except ImportError as err:  # pragma: no cover - tensorflow-datasets is a hard dependency
    raise ImportError(
        "The TFDS VOC builder needs tensorflow-datasets: pip install tensorflow-datasets"
    ) from err

from deeplab_tf.data.readers import DatasetError, decode_example

_SPLITS = {
    "segmentation": ("voc2012", ("train", "val", "trainval")),
    "aug": ("voc2012_aug", ("train_aug", "val")),
}


class ListingBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder over one of this package's file datasets (read from ``manual_dir``).

    Subclasses set ``SPLITS`` (config name -> ``(dataset name, splits)``) and ``HOMEPAGE``.
    Images keep their JPEG bytes; labels are decoded, mapped and validated once by the same
    listing and readers as ``load_dataset`` and stored as 1-channel PNGs of class ids.
    """

    SPLITS: dict = {}
    HOMEPAGE = ""

    @classmethod
    def load(cls, name, split, manual_dir=None, data_dir=None, shuffle_files=False):
        """Prepares the records of dataset ``name`` once (from ``manual_dir``) and returns
        ``(dataset in the shared spec, number of examples)`` for ``split``.

        Raises:
            ValueError: ``name`` is not one of this builder's datasets, or ``split`` not one
                of its splits.
        """
        configs = {dataset: config for config, (dataset, _) in cls.SPLITS.items()}
        if name not in configs:
            raise ValueError(f"name must be one of {sorted(configs)}. Received: name={name!r}")
        config = configs[name]
        splits = cls.SPLITS[config][1]
        if split not in splits:
            raise ValueError(f"{name} split must be one of {splits}. Received: split={split!r}")
        builder = cls(config=config, data_dir=data_dir)
        dl_config = None
        if manual_dir is not None:
            dl_config = tfds.download.DownloadConfig(
                manual_dir=os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
            )
        builder.download_and_prepare(download_config=dl_config)
        ds = builder.as_dataset(
            split=split,
            shuffle_files=shuffle_files,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        return from_tfds_voc(ds), builder.info.splits[split].num_examples

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
        )

    def _split_generators(self, dl_manager):
        name, splits = self.SPLITS[self.builder_config.name]
        root = os.fspath(dl_manager.manual_dir)
        return {s: self._generate_examples(name=name, split=s, root=root) for s in splits}

    def _generate_examples(self, name, split, root):
        from PIL import Image

        from deeplab_tf.data.catalog import list_dataset

        listing = list_dataset(name, split, root)
        if listing.problems:
            raise DatasetError(
                f"{len(listing.problems)} example(s) have missing files, e.g. "
                f"{listing.problems[0]['error']}",
                path=listing.problems[0]["path"],
            )
        for ex in listing.examples:
            image, label = decode_example(ex, listing.label_map)
            with Image.open(ex.image_path) as im:
                keep_bytes = im.format == "JPEG" and im.mode == "RGB"
            yield (
                ex.id,
                {
                    "image": ex.image_path if keep_bytes else image,
                    "label": label[..., None],
                    "id": ex.id,
                },
            )


class DeeplabVoc2012(ListingBuilder):
    """PASCAL VOC 2012 segmentation (+ SBD train_aug) from a manual_dir."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "VOC 2012 segmentation and SBD train_aug."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Extract VOCtrainval_11-May-2012.tar (VOCdevkit/VOC2012/...) into manual_dir. For the
    "aug" config also extract SBD's benchmark.tgz there (benchmark_RELEASE/dataset/cls/*.mat)
    or put a SegmentationClassAug/ folder of PNG masks there.
    """
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name="segmentation", description="VOC 2012 segmentation: train, val, trainval."
        ),
        tfds.core.BuilderConfig(
            name="aug", description="VOC 2012 + SBD: train_aug (10,582) and val (1,449)."
        ),
    ]
    SPLITS = _SPLITS
    HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"


def decode_image_accurate(data):
    """Decodes JPEG with the accurate integer IDCT (as libjpeg, Pillow, OpenCV and Caffe do).

    ``tf.io.decode_jpeg``'s default (``INTEGER_FAST``) differs from those by up to a few
    levels per pixel; PNG bytes (images stored re-encoded) decode losslessly.
    """
    import tensorflow as tf

    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_png(data, channels=3),
    )
    image.set_shape([None, None, 3])
    return image


def from_tfds_voc(ds):
    """Maps ``deeplab_voc2012`` elements (image bytes undecoded) to the shared spec."""
    import tensorflow as tf

    return ds.map(
        lambda ex: {
            "image": decode_image_accurate(ex["image"]),
            "label": ex["label"][..., 0],
            "id": ex["id"],
        },
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def tfds_voc(name, split, manual_dir=None, data_dir=None, shuffle_files=False):
    """Prepares (once) and loads ``voc2012`` / ``voc2012_aug`` through the TFDS builder.

    Args:
        name: ``"voc2012"`` or ``"voc2012_aug"``.
        split: a split of that dataset (``train/val/trainval`` or ``train_aug/val``).
        manual_dir: folder holding the extracted VOCdevkit (and SBD).
        data_dir: TFDS data folder (default ``~/tensorflow_datasets``).
        shuffle_files: shuffle the TFRecord shards.

    Returns:
        ``(dataset, DatasetInfo)``.
    """
    from deeplab_tf.data.info import DatasetInfo
    from deeplab_tf.data.palettes import VOC_CLASSES, voc_palette

    ds, n = DeeplabVoc2012.load(name, split, manual_dir, data_dir, shuffle_files)
    info = DatasetInfo(name=name, class_names=VOC_CLASSES, palette=voc_palette(), num_examples=n)
    return ds, info
