"""The training config's ``data`` section: dataset names, roots, list files and each dataset's own
keys are checked before any work, every bad input named with what was received and expected."""

import copy
import inspect
import os

import pytest

from deeplab_tf.training.schema import DATASET_FIELDS, FILE_KEYS, SCHEMA
from deeplab_tf.training.trainer import resolve_config


def _config(data, workdir="unused"):
    return {
        "model": {"name": "deeplabv2_mobilenetv2_aspp_l", "weights": None},
        "data": data,
        "train": {"steps": 2, "batch_size": 2, "crop_size": 32, "verbose": 0},
        "output": {"workdir": workdir, "checkpoint_every": 1, "tensorboard": False},
    }


def test_dataset_fields_are_the_keyword_arguments_of_each_dataset():
    """DATASET_FIELDS lists exactly what each listing function (or synthetic_dataset) takes."""
    from deeplab_tf.data.catalog import DATASET_NAMES, lister
    from deeplab_tf.data.synthetic import synthetic_dataset

    assert set(DATASET_FIELDS) == set(DATASET_NAMES)
    for name in DATASET_NAMES:
        if name == "synthetic":
            fn, common = synthetic_dataset, {"split", "seed"}
        else:
            fn, common = lister(name), {"root", "split"}
        params = inspect.signature(fn).parameters.values()
        named = {p.name for p in params if p.kind is not p.VAR_KEYWORD}
        assert named - common == set(DATASET_FIELDS[name]), name
        assert not set(DATASET_FIELDS[name]) & set(SCHEMA["data"]), name
    assert set(FILE_KEYS) < set(SCHEMA["data"])


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            {"name": "voc2012_aug", "root": 5},
            ["data.root must be a non-empty string. Received: 5"],
        ),
        (
            {"name": "voc2012_aug", "root": "/d", "sbd_rot": "/sbd"},
            [
                "Unknown keys in config section 'data' for dataset 'voc2012_aug': ['sbd_rot']",
                "'sbd_rot' (did you mean 'sbd_root'?)",
            ],
        ),
        (
            {"name": "voc2012", "root": "/d", "train": {"split": "train", "list_fil": "l.txt"}},
            ["'train.list_fil' (did you mean 'list_file'?)"],
        ),
        (
            {"name": "voc2012", "root": "/d", "train": {"split": "train", "list_file": ["l"]}},
            ["data.train.list_file must be a non-empty string. Received: ['l']"],
        ),
        (
            {"name": "voc2012", "root": "/d", "val": {"split": 3}},
            ["data.val.split must be a non-empty string. Received: 3"],
        ),
        (
            {"name": "cityscapes", "root": "/d", "list_file": "l.txt"},
            [
                "for dataset 'cityscapes': ['list_file']",
                "'list_file' is a key of 'voc2012', 'voc2012_aug', 'cocostuff10k', 'coco2014', "
                "'pascal_context', 'person_part'",
            ],
        ),
        (
            {"name": "cityscapes", "root": "/d", "label_type": "trainids"},
            [
                "data.label_type must be one of ['labelIds', 'trainIds'] (did you mean "
                "'trainIds'?). Received: 'trainids'"
            ],
        ),
        (
            {"name": "folder", "root": "/d", "class_names": ["a", 1], "ignore_label": -1},
            [
                "data.class_names every item must be a non-empty string. Received: ['a', 1]",
                "data.ignore_label must be >= 0. Received: -1",
            ],
        ),
        (
            {"name": "folder", "root": "/d", "num_classes": 300, "palette": [[0, 0, 0], [1, 2]]},
            [
                "data.num_classes must be <= 255. Received: 300",
                "data.palette must be a non-empty list of [r, g, b] colours, each 0..255. "
                "Received: [[0, 0, 0], [1, 2]]",
            ],
        ),
        (
            {"name": "folder", "root": "/d", "num_classes": 3, "unlabeled": "yes"},
            ["data.unlabeled must be true or false. Received: 'yes'"],
        ),
        (
            {"name": "synthetic", "size": 8, "num_classes": 12, "train": {"num_images": "8"}},
            [
                "data.size must be >= 16 on each side. Received: 8",
                "data.num_classes must be <= 8. Received: 12",
                "data.train.num_images must be a positive int. Received: '8'",
            ],
        ),
        (
            {"name": "synthetic", "root": "/x", "train": {"on_error": "skip"}},
            [
                "data.root is not a key of dataset 'synthetic' (it reads no files; expected only "
                "split, seed and ['max_objects', 'noise', 'num_classes', 'num_images', 'size']). "
                "Received: '/x'",
                "data.train.on_error is not a key of dataset 'synthetic'",
            ],
        ),
        (
            {"name": "synthetic", "train": {"name": "voc2012"}},
            ["data.train.name cannot be set per split", "Received: 'voc2012'"],
        ),
        (
            {"name": "folder", "root": "/d", "num_classes": 3, "source": "tfds"},
            [
                "data.source 'tfds' is available for ['voc2012', 'voc2012_aug', 'cityscapes', "
                "'cocostuff10k', 'cocostuff164k']. Received: name='folder'",
                "data.source 'tfds' takes no dataset options; expected none of "
                "['num_classes']. Received: num_classes=3",
            ],
        ),
        (
            {"name": "voc2012", "root": "/d", "train": {"split": "train", "data_dir": "/t"}},
            ["data.train.data_dir is only used with source 'tfds'. Received: data_dir='/t'"],
        ),
        (
            {"name": "voc2012", "root": "/d", "on_error": "ignore"},
            [
                "data.on_error must be one of ['raise', 'skip']. Received: 'ignore'",
            ],
        ),
        (
            {"name": "vocc2012", "root": "/d"},
            ["data.name must be one of", "(did you mean 'voc2012'?). Received: 'vocc2012'"],
        ),
        ({"root": "/d"}, ["data.name is required. Received none"]),
    ],
)
def test_bad_data_sections_name_key_received_and_expected(data, expected):
    with pytest.raises(ValueError) as info:
        resolve_config(_config(data))
    message = str(info.value)
    for text in expected:
        assert text in message, (text, message)


def test_each_dataset_takes_its_own_keys_and_they_pass_through_unchanged():
    for data in (
        {"name": "voc2012", "root": "/d", "train": {"split": "train", "list_file": "t.txt"}},
        {"name": "voc2012_aug", "root": "/d", "sbd_root": "/s", "aug_dir": "/a", "val": None},
        {"name": "cityscapes", "root": "/d", "label_type": "trainIds", "on_error": "skip"},
        {"name": "pascal_context", "root": "/d", "label_dir": "/l", "list_file": "t.txt"},
        {"name": "person_part", "root": "/d", "label_dir": "/l"},
        {"name": "folder", "root": "/d", "class_names": ["bg", "fg"], "palette": [[0, 0, 0]]},
        {"name": "voc2012_aug", "root": "/d", "source": "tfds", "data_dir": "/t"},
        {"name": "synthetic", "size": [32, 48], "seed": 3, "train": {"noise": 0, "split": "a"}},
        {"name": "voc2012_aug", "root": None},  # the shipped configs: root given at train time
    ):
        assert resolve_config(_config(copy.deepcopy(data)))["data"] == data


def test_every_problem_of_the_data_section_is_reported_at_once():
    data = {
        "name": "folder",
        "root": 3,
        "num_classes": 0,
        "lst_file": "x",
        "train": {"split": "train", "unlabeled": 1},
    }
    with pytest.raises(ValueError, match=r"\(4 problems\)") as info:
        resolve_config(_config(data))
    message = str(info.value)
    assert "data.root must be a non-empty string. Received: 3" in message
    assert "data.num_classes must be >= 1. Received: 0" in message
    assert "data.train.unlabeled must be true or false. Received: 1" in message
    assert "'lst_file' (did you mean 'list_file'?)" not in message  # not a key of folder
    assert "['lst_file']" in message


def test_bad_data_fails_before_any_work(tmp_path, capsys):
    """train() and the CLI refuse a bad data section before a strategy, a dataset or the
    workdir exists."""
    import yaml

    from deeplab_tf.cli import main
    from deeplab_tf.training import train

    workdir = tmp_path / "w"
    bad = {"name": "synthetic", "num_images": 0}
    with pytest.raises(ValueError, match=r"data.num_images must be a positive int. Received: 0"):
        train(_config(bad, str(workdir)))
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_config({"name": "voc2012", "root": "/d", "list_fle": "x"})))
    assert main(["train", "--config", str(path), "--workdir", str(workdir)]) == 2
    assert "'list_fle' (did you mean 'list_file'?)" in capsys.readouterr().err
    assert not os.path.exists(workdir)
