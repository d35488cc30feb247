"""A TFDS builder for COCO-Stuff 10k and 164k (manual_dir), on the file readers' listings.

The extracted releases (the layouts of :mod:`deeplab_tf.data.cocostuff`) are read from the
builder's ``manual_dir`` and prepared once into TFRecords; afterwards ``tfds.load`` reads the
records::

    import deeplab_tf.data.tfds_cocostuff  # registers "deeplab_cocostuff"
    ds = tfds.load(
        "deeplab_cocostuff/10k", split="train",
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir="~/cocostuff-10k-v1.1")},
    )

Configs: ``10k`` (train 9,000 / test 1,000; the ``.mat`` ids shifted to 0..181, 255 =
unlabeled) and ``164k`` (train2017 118,287 / val2017 5,000). Images keep their JPEG bytes;
labels are stored as 1-channel PNGs of ids 0..181 and 255, validated once while preparing.
"""

from __future__ import annotations

from deeplab_tf.data.tfds_voc import ListingBuilder, tfds

_SPLITS = {
    "10k": ("cocostuff10k", ("train", "test")),
    "164k": ("cocostuff164k", ("train2017", "val2017")),
}


class DeeplabCocostuff(ListingBuilder):
    """COCO-Stuff 10k and 164k from a manual_dir."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "COCO-Stuff 10k (v1.1 .mat) and 164k (stuffthingmaps)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    "10k": extract cocostuff-10k-v1.1.zip into manual_dir (images/, annotations/*.mat,
    imageLists/). "164k": put COCO 2017's train2017/ and val2017/ images under
    manual_dir/images/ and extract stuffthingmaps_trainval2017.zip under
    manual_dir/annotations/.
    """
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="10k", description="COCO-Stuff 10k: train, test."),
        tfds.core.BuilderConfig(name="164k", description="COCO-Stuff 164k: train2017, val2017."),
    ]
    SPLITS = _SPLITS
    HOMEPAGE = "https://github.com/nightrome/cocostuff"


def tfds_cocostuff(name, split, manual_dir=None, data_dir=None, shuffle_files=False):
    """Prepares (once) and loads ``cocostuff10k`` / ``cocostuff164k`` through the builder.

    Args:
        name: ``"cocostuff10k"`` or ``"cocostuff164k"``.
        split: ``train``/``test`` (10k) or ``train2017``/``val2017`` (164k; ``train`` and
            ``val`` name them too).
        manual_dir: the extracted release.
        data_dir: TFDS data folder (default ``~/tensorflow_datasets``).
        shuffle_files: shuffle the TFRecord shards.

    Returns:
        ``(dataset, DatasetInfo)``.
    """
    from deeplab_tf.data.cocostuff import cocostuff_info

    if name == "cocostuff164k":
        split = {"train": "train2017", "val": "val2017"}.get(split, split)
    ds, n = DeeplabCocostuff.load(name, split, manual_dir, data_dir, shuffle_files)
    return ds, cocostuff_info(name, n)
