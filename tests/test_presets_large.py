"""Full-size presets end to end: release-shaped files (a ResNet-101 ASPP-L caffemodel in a
``prototxt_and_model.zip`` written with the project's own caffemodel writer, and a ``.pth``
with the PyTorch port's module names) served from 127.0.0.1 through the mirror setting,
fetched, converted once, cached, and compared tensor by tensor with ``convert-caffe`` and with
the torch reference on the same files.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from tests._caffe_reference import caffe_layers, synthetic_caffemodel
from tests._convert_utils import assert_every_tensor
from tests._http_server import serve_folder

pytestmark = pytest.mark.large

VOC = "deeplabv2_resnet101_voc12"
STUFF = "deeplabv2_resnet101_cocostuff164k"
STUFF_FILE = "deeplabv2_resnet101_msc-cocostuff164k-100000.pth"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("DEEPLAB_TF_CACHE", str(root))
    monkeypatch.delenv("DEEPLAB_TF_WEIGHTS_MIRROR", raising=False)
    return root


def _same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for va, vb in zip(a.weights, b.weights):
        assert va.path == vb.path
        np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=va.path)


def _photo(size=67, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (1, size, size, 3)).astype("float32")


def test_voc12_preset_equals_convert_caffe_and_is_cached(cache, tmp_path, monkeypatch, capsys):
    import deeplab_tf
    from deeplab_tf import DeepLabV2
    from deeplab_tf.cli import main
    from deeplab_tf.convert import convert_caffemodel
    from deeplab_tf.weights import ChecksumError
    from deeplab_tf.weights.cache import cache_dir, read_records

    site = tmp_path / "site"
    site.mkdir()
    caffe = tmp_path / "train_iter_20000.caffemodel"
    layers = synthetic_caffemodel(caffe, "resnet101-aspp-l", seed=11)
    with zipfile.ZipFile(site / "prototxt_and_model.zip", "w") as z:
        z.writestr("test.prototxt", "name: 'DeepLab-v2 ResNet-101'\n")
        z.write(caffe, "train_iter_20000.caffemodel")
    with serve_folder(site) as (url, log):
        monkeypatch.setenv("DEEPLAB_TF_WEIGHTS_MIRROR", url)
        model = deeplab_tf.create_model("deeplabv2_resnet101_aspp_l", weights="voc12")
    assert log == [("prototxt_and_model.zip", None)]
    assert model.preset["name"] == VOC and model.preset["classes"] == "voc"
    assert assert_every_tensor(model, layers) > 200
    reference, _ = convert_caffemodel(str(caffe), arch="resnet101-aspp-l")
    _same_weights(model, reference)
    x = _photo()
    np.testing.assert_array_equal(model.predict(x, verbose=0), reference.predict(x, verbose=0))

    # Second use: the server is gone, the converted file is read from the cache.
    again = DeepLabV2.from_preset(VOC)
    _same_weights(again, reference)
    records = read_records()
    assert {"downloads/prototxt_and_model.zip", f"sources/{VOC}/train_iter_20000.caffemodel",
            f"converted/{VOC}.weights.h5"} <= set(records)  # fmt: skip
    assert main(["weights", "verify", VOC]) == 0
    assert capsys.readouterr().out.count("OK ") == 3
    converted = os.path.join(cache_dir(), "converted", f"{VOC}.weights.h5")
    with open(converted, "r+b") as f:
        f.seek(os.path.getsize(converted) // 2)
        f.write(b"\xff" * 8)
    with pytest.raises(ChecksumError, match="recorded on its first download"):
        DeepLabV2.from_preset(VOC)


def test_backbone_only_preset_keeps_the_models_classifier(cache, tmp_path, monkeypatch):
    from deeplab_tf import DeepLabV2

    site = tmp_path / "site"
    site.mkdir()
    init = tmp_path / "init.caffemodel"
    layers = synthetic_caffemodel(init, "resnet101-aspp-l", num_classes=91, seed=12)
    with zipfile.ZipFile(site / "prototxt_and_model.zip", "w") as z:
        z.write(init, "init.caffemodel")
    monkeypatch.setenv("DEEPLAB_TF_WEIGHTS_MIRROR", str(site))
    model = DeepLabV2(backbone="resnet101", head="aspp_l", num_classes=5, weights="coco_init")
    fresh = DeepLabV2(backbone="resnet101", head="aspp_l", num_classes=5)
    backbone = [x for x in layers if not x.name.startswith("fc1_")]
    assert assert_every_tensor(model, backbone) > 200
    kernel = model.get_layer("fc1_voc12_c0").kernel.numpy()
    assert kernel.shape[-1] == 5 and np.std(kernel) > 0  # its own random init, not COCO's 91
    again = DeepLabV2(backbone="resnet101", head="aspp_l", num_classes=5, weights="coco_init")
    assert assert_every_tensor(again, backbone) > 200
    # the cached file does not carry the first model's classifier into the second
    assert not np.array_equal(again.get_layer("fc1_voc12_c0").kernel.numpy(), kernel)
    del fresh


def _port_pth(path, num_classes, seed):
    torch = pytest.importorskip("torch", reason="torch writes the reference .pth file")
    from tests.test_convert import _port_state_dict

    layers = caffe_layers("resnet101-aspp-l", num_classes=num_classes, seed=seed)
    sd = _port_state_dict(layers, 101)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path)
    return layers, torch


def test_cocostuff_pth_preset_equals_the_torch_reference_and_predicts(cache, tmp_path, monkeypatch):
    from PIL import Image

    from deeplab_tf import DeepLabV2
    from deeplab_tf.cli import main
    from deeplab_tf.convert.caffe_to_keras import assign_plan, map_caffe_to_keras
    from deeplab_tf.convert.torch_port import state_dict_to_caffe_net
    from deeplab_tf.data.palettes import label_set

    site = tmp_path / "site"
    site.mkdir()
    layers, torch = _port_pth(site / STUFF_FILE, 182, seed=13)
    with serve_folder(site) as (url, _):
        monkeypatch.setenv("DEEPLAB_TF_WEIGHTS_MIRROR", url)
        model = DeepLabV2.from_preset(STUFF)
    assert model.get_config()["num_classes"] == 182
    # the torch reference: torch.load on the same file, mapped by the same checked table
    state = torch.load(site / STUFF_FILE, map_location="cpu", weights_only=True)
    reference = DeepLabV2(backbone="resnet101", head="aspp_l", num_classes=182)
    net = state_dict_to_caffe_net({k: v.numpy() for k, v in state.items()})
    plan, _ = map_caffe_to_keras(net, reference, True)
    assign_plan(reference, plan)
    _same_weights(model, reference)
    assert assert_every_tensor(model, layers) > 200
    x = _photo(49, 1)
    np.testing.assert_array_equal(model.predict(x, verbose=0), reference.predict(x, verbose=0))

    # predict --preset: COCO-Stuff palette and a legend with its class names
    image = tmp_path / "photo.png"
    Image.fromarray(_photo(57, 2)[0].astype(np.uint8)).save(image)
    out = tmp_path / "pred"
    code = main(["predict", str(image), "--preset", STUFF, "--out", str(out), "--legend",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    label = Image.open(out / "photo.png")
    assert label.mode == "P"
    names, palette = label_set("cocostuff")
    assert np.array_equal(np.asarray(label.getpalette()[: 3 * 182]).reshape(-1, 3), palette[:182])
    overlay = np.asarray(Image.open(out / "photo_overlay.png"))
    assert overlay.shape[0] > 57 and overlay.shape[1] == 57  # the legend strip below the photo


def test_checkpoint_of_another_class_count_is_refused_and_nothing_cached(
    cache, tmp_path, monkeypatch
):
    from deeplab_tf import DeepLabV2
    from deeplab_tf.weights.cache import cache_dir

    site = tmp_path / "site"
    site.mkdir()
    _port_pth(site / STUFF_FILE, 21, seed=14)  # a VOC checkpoint under the COCO-Stuff name
    monkeypatch.setenv("DEEPLAB_TF_WEIGHTS_MIRROR", str(site))
    with pytest.raises(ValueError, match="182"):
        DeepLabV2.from_preset(STUFF)
    assert not os.path.exists(os.path.join(cache_dir(), "converted"))


def test_pth_with_a_foreign_pickle_global_is_refused_and_nothing_converted(
    cache, tmp_path, monkeypatch
):
    import pickle

    from deeplab_tf import DeepLabV2
    from deeplab_tf.weights import UnsafePickleError
    from deeplab_tf.weights.cache import cache_dir

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / STUFF_FILE, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"base.aspp.c0.weight": Evil()}, protocol=2))
    monkeypatch.setenv("DEEPLAB_TF_WEIGHTS_MIRROR", str(site))
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        DeepLabV2.from_preset(STUFF)
    assert not (tmp_path / "ran").exists()
    assert not os.path.exists(os.path.join(cache_dir(), "converted"))
