"""Caffe release -> Keras conversion: synthetic caffemodels of every architecture (real names and
shapes, random weights) written by our own writer, converted, checked tensor by tensor and against
a NumPy interpreter of the Caffe layers."""

import json
import os
import re

import keras
import numpy as np
import pytest

from deeplab_tf.convert import (
    ChecksumError,
    ConversionError,
    convert_caffemodel,
    guess_architecture,
    load_weights,
    map_caffe_to_keras,
    parse_caffemodel,
    read_caffemodel,
    write_caffemodel,
)
from deeplab_tf.convert.architectures import ARCHITECTURES, build_model
from deeplab_tf.convert.caffemodel import CaffeLayer, CaffeNet, ConvSpec, serialize_caffemodel
from tests._caffe_reference import caffe_layers, synthetic_caffemodel
from tests._convert_utils import assert_close_to_reference, assert_every_tensor, caffe_forward

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vgg_largefov(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("caffe") / "vgg16_largefov.caffemodel")
    layers = synthetic_caffemodel(path, "vgg16-largefov", seed=1)
    return path, layers


def _image(rng, h, w):
    return rng.uniform(0, 255, (1, h, w, 3)).astype(np.float32)


# --- reader / writer ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["v1", "v2"])
@pytest.mark.parametrize("shape_encoding", ["shape", "legacy"])
def test_reader_reads_both_layer_and_shape_encodings(tmp_path, rng, encoding, shape_encoding):
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    ip = rng.standard_normal((5, 7)).astype(np.float32)
    layers = [
        CaffeLayer("data", "Data", [], ["data"]),
        CaffeLayer(
            "c",
            "Convolution",
            ["data"],
            ["c"],
            [w, b],
            conv=ConvSpec(4, (3, 2), (2, 1), (1, 0), (3, 1)),
        ),  # fmt: skip
        CaffeLayer("ip", "InnerProduct", ["c"], ["ip"], [ip]),
        CaffeLayer("r", "ReLU", ["ip"], ["ip"]),
    ]
    path = write_caffemodel(tmp_path / "m.caffemodel", layers, encoding=encoding,
                            shape_encoding=shape_encoding)  # fmt: skip
    net = read_caffemodel(path)
    assert net.encoding == encoding
    assert [(x.name, x.type) for x in net.layers] == [(x.name, x.type) for x in layers]
    c = net.layers[1]
    assert (c.conv.kernel, c.conv.stride, c.conv.pad, c.conv.dilation) == (
        (3, 2), (2, 1), (1, 0), (3, 1))  # fmt: skip
    np.testing.assert_array_equal(c.blobs[0], w)
    np.testing.assert_array_equal(c.blobs[1].reshape(-1), b)
    assert c.blobs[1].shape == ((4,) if shape_encoding == "shape" else (1, 1, 1, 4))
    np.testing.assert_array_equal(net.layers[2].blobs[0].reshape(5, 7), ip)


def test_writer_matches_protobuf_serialisation(rng):
    """The hand-encoded blobs are byte-for-byte what the protobuf library writes."""
    from deeplab_tf.convert import caffe_pb2

    w = rng.standard_normal((2, 3, 1, 1)).astype(np.float32)
    layer = CaffeLayer("c", "Convolution", ["x"], ["c"], [w], conv=ConvSpec(2, (1, 1)))
    ours = caffe_pb2.NetParameter.FromString(serialize_caffemodel([layer], name="n"))
    ref = caffe_pb2.NetParameter(name="n")
    lp = ref.layer.add(name="c", type="Convolution", bottom=["x"], top=["c"])
    lp.convolution_param.num_output = 2
    lp.convolution_param.bias_term = True
    lp.convolution_param.kernel_size.append(1)
    blob = lp.blobs.add()
    blob.shape.dim.extend([2, 3, 1, 1])
    blob.data.extend(w.ravel().tolist())
    assert ours == ref


# --- every architecture: every tensor + a forward pass against NumPy ---------------------------


def test_vgg16_largefov_v2(vgg_largefov, rng):
    path, layers = vgg_largefov
    model, report = convert_caffemodel(path, arch="vgg16-largefov")
    assert report.encoding == "v2" and report.classifier_tag == "voc12"
    assert model.output.shape[-1] == 21
    assert assert_every_tensor(model, layers) == 16
    assert report.num_tensors == 32 == len(model.weights)
    x = _image(rng, 21, 26)  # odd and even sides: ceil-mode pooling matters
    ref = caffe_forward(layers, x, "fc8_voc12")
    assert_close_to_reference(model.predict(x, verbose=0), ref)


@pytest.mark.large
def test_vgg16_aspp_l_v1_legacy_shapes(tmp_path, rng):
    path = str(tmp_path / "vgg16_aspp_l_v1.caffemodel")
    layers = synthetic_caffemodel(path, "vgg16-aspp-l", num_classes=5, seed=2, encoding="v1",
                                  shape_encoding="legacy")  # fmt: skip
    net = read_caffemodel(path)
    assert net.encoding == "v1"
    assert net.by_name()["fc7_1"].blobs[1].shape == (1, 1, 1, 1024)
    model, report = convert_caffemodel(net, arch="vgg16-aspp-l")  # 5 classes read from the file
    assert model.output.shape[-1] == 5
    assert assert_every_tensor(model, layers) == 13 + 12
    x = _image(rng, 18, 17)
    assert_close_to_reference(model.predict(x, verbose=0), caffe_forward(layers, x, "fc8_voc12"))


@pytest.mark.large
def test_resnet101_aspp_l_with_msc_copies(tmp_path, rng):
    path = str(tmp_path / "resnet101.caffemodel")
    copies = ("conv1", "bn_conv1", "scale_conv1", "res4b22_branch2b", "fc1_voc12_c3")
    layers = synthetic_caffemodel(path, "resnet101-aspp-l", seed=3, msc_copies=copies)
    model, report = convert_caffemodel(path, arch="resnet101-aspp-l")
    expected = sorted(c + s for c in copies for s in ("_res075", "_res05"))
    assert sorted(report.skipped_msc) == expected
    assert assert_every_tensor(model, layers) == 104 + 104 + 4
    assert report.num_tensors == len(model.weights)
    x = _image(rng, 25, 30)
    assert_close_to_reference(model.predict(x, verbose=0), caffe_forward(layers, x, "fc1_voc12"))
    # the first conv + BN + ReLU + pool on its own, too
    stem = keras.Model(model.input, model.get_layer("pool1").output)
    assert_close_to_reference(stem.predict(x, verbose=0), caffe_forward(layers, x, "pool1"),
                              rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_guess_architecture(arch):
    net = CaffeNet("x", caffe_layers(arch, seed=None), "v2")
    assert guess_architecture(net) == arch


# --- bad input -----------------------------------------------------------------------------------


def test_truncated_and_corrupt_files(vgg_largefov, tmp_path):
    path, _ = vgg_largefov
    data = open(path, "rb").read()
    with pytest.raises(ValueError, match="truncated or corrupt"):
        parse_caffemodel(data[: len(data) // 2], source="half.caffemodel")
    with pytest.raises(ValueError, match="holds no Caffe layers"):
        parse_caffemodel(b"", source="empty.caffemodel")
    with pytest.raises(ValueError, match="(truncated or corrupt|holds no Caffe layers)"):
        parse_caffemodel(b"name: 'not a binary proto'\nlayer { }\n" * 10, source="text.prototxt")
    with pytest.raises(ValueError, match="(truncated or corrupt|holds no Caffe layers)"):
        parse_caffemodel(np.random.default_rng(0).bytes(4096), source="noise.bin")
    with pytest.raises(FileNotFoundError, match="No such caffemodel"):
        read_caffemodel(tmp_path / "missing.caffemodel")


def test_file_cut_at_a_layer_boundary_reports_missing_layers():
    layers = caffe_layers("vgg16-largefov", seed=None)
    cut = [x for x in layers if not x.name.startswith(("fc7", "fc8"))]
    net = parse_caffemodel(serialize_caffemodel(cut), source="cut.caffemodel")
    model = build_model("vgg16-largefov")
    with pytest.raises(ConversionError, match=r"model layers with no weights in the file: fc7"):
        map_caffe_to_keras(net, model)


def test_wrong_architecture_is_refused_and_named(vgg_largefov):
    path, _ = vgg_largefov
    model = build_model("vgg16-aspp-l")
    before = [w.numpy().copy() for w in model.weights[:4]]
    with pytest.raises(ConversionError) as err:
        convert_caffemodel(path, model=model)
    msg = str(err.value)
    assert "layers of the file with no place in the model: fc6 (Convolution" in msg
    assert "model layers with no weights in the file: fc6_1" in msg
    assert "looks like vgg16-largefov" in msg
    for w, b in zip(model.weights[:4], before):  # nothing assigned on failure
        np.testing.assert_array_equal(w.numpy(), b)


def test_resnet_file_into_vgg_model_is_refused():
    net = CaffeNet("r", caffe_layers("resnet50-aspp-l", seed=None), "v2", source="r.caffemodel")
    with pytest.raises(ConversionError, match="looks like resnet50-aspp-l"):
        map_caffe_to_keras(net, build_model("vgg16-largefov"))


def test_hyperparameter_mismatches_are_precise():
    layers = caffe_layers("vgg16-largefov", seed=None)
    by = {x.name: x for x in layers}
    by["conv5_1"].conv.dilation = (1, 1)
    by["conv5_1"].conv.pad = (1, 1)
    by["conv2_1"].conv.stride = (2, 2)
    by["fc6"].conv.group = 2
    net = CaffeNet("v", layers, "v2", source="edited.caffemodel")
    with pytest.raises(ConversionError) as err:
        map_caffe_to_keras(net, build_model("vgg16-largefov"))
    msg = str(err.value)
    assert "conv5_1: dilation in file (1, 1) != model (2, 2)" in msg
    assert "conv5_1: pad in file (1, 1) != model (2, 2)" in msg
    assert "conv2_1: stride in file (2, 2) != model (1, 1)" in msg
    assert "fc6: group in file 2 != model 1" in msg
    assert "4 problem(s)" in msg


def test_wrong_class_count_and_classifier_opt_out(tmp_path):
    layers = caffe_layers("vgg16-largefov", num_classes=91, seed=None, classifier_tag="coco")
    net = CaffeNet("v", layers, "v2", source="coco.caffemodel")
    model = build_model("vgg16-largefov", num_classes=21)
    with pytest.raises(ConversionError, match=r"fc8_coco -> fc8_voc12: output channels in file 91"):
        map_caffe_to_keras(net, model)
    kernel = model.get_layer("fc8_voc12").kernel.numpy().copy()
    _, report = convert_caffemodel(net, model=model, include_classifier=False)
    assert report.skipped_classifier == ["fc8_coco"]
    np.testing.assert_array_equal(model.get_layer("fc8_voc12").kernel.numpy(), kernel)
    np.testing.assert_array_equal(model.get_layer("fc7").kernel.numpy(), 0.0)  # loaded zeros


# --- CLI, manifest and DeepLabV2(weights=...) ---------------------------------------------------


def test_cli_manifest_and_checksum_refusal(vgg_largefov, tmp_path, rng, capsys):
    from deeplab_tf import DeepLabV2
    from deeplab_tf.cli import main

    path, layers = vgg_largefov
    out = tmp_path / "w" / "vgg.weights.h5"
    manifest = tmp_path / "w" / "manifest.json"
    argv = ["convert-caffe", path, "--arch", "vgg16-largefov", "--out", str(out),
            "--manifest", str(manifest), "--name", "vgg_test"]  # fmt: skip
    assert main(argv) == 0
    assert "sha256" in capsys.readouterr().out
    assert sorted(os.listdir(out.parent)) == ["manifest.json", "vgg.weights.h5"]
    entry = json.loads(manifest.read_text())["models"][0]
    assert entry["name"] == "vgg_test" and entry["source_file"] == "vgg16_largefov.caffemodel"
    assert len(entry["sha256"]) == 64

    model = DeepLabV2(backbone="vgg16", head="largefov", weights=str(out))  # manifest beside it
    assert_every_tensor(model, layers)
    x = _image(rng, 17, 17)
    direct = load_weights(DeepLabV2(backbone="vgg16", head="largefov"), path)  # the caffemodel
    np.testing.assert_allclose(model.predict(x, verbose=0), direct.predict(x, verbose=0))

    # The builder also converts a Caffe file itself (how the VGG-16 presets without a download
    # address are used), through the same strict converter; a file of another architecture is
    # refused with the converter's report.
    built = DeepLabV2(backbone="vgg16", head="largefov", weights=path)
    assert_every_tensor(built, layers)
    with pytest.raises(ValueError, match="fc8|rate|dilation|shape|layer"):
        DeepLabV2(backbone="vgg16", head="aspp_l", weights=path)

    entry["sha256"] = "0" * 64
    manifest.write_text(json.dumps({"format_version": 1, "models": [entry]}))
    with pytest.raises(ChecksumError, match="does not match manifest entry 'vgg_test'"):
        DeepLabV2(backbone="vgg16", head="largefov", weights=str(out))


def test_cli_errors_leave_no_output(vgg_largefov, tmp_path, capsys):
    from deeplab_tf.cli import main

    path, _ = vgg_largefov
    out = tmp_path / "x.weights.h5"
    assert main(["convert-caffe", path, "--arch", "vgg16-aspp-s", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "deeplab-tf: error:" in err and "looks like vgg16-largefov" in err
    assert main(["convert-caffe", path, "--arch", "alexnet", "--out", str(out)]) == 2
    assert "Unknown Caffe architecture" in capsys.readouterr().err
    assert main(["convert-caffe", path, "--arch", "vgg16-largefov", "--out", "x.h5"]) == 2
    assert os.listdir(tmp_path) == []
    assert main(["convert-caffe", path, "--arch", "auto", "--out", str(out)]) == 0
    assert "architecture vgg16-largefov, 21 classes, 16 layers" in capsys.readouterr().out
    assert os.listdir(tmp_path) == ["x.weights.h5"]


def test_cli_never_replaces_outputs_unless_asked(vgg_largefov, tmp_path, capsys):
    from deeplab_tf.cli import main

    path, _ = vgg_largefov
    out = tmp_path / "x.weights.h5"
    manifest = tmp_path / "manifest.json"
    argv = ["convert-caffe", path, "--arch", "vgg16-largefov", "--out", str(out),
            "--manifest", str(manifest), "--name", "x"]  # fmt: skip
    assert main(argv) == 0
    first = out.read_bytes()
    capsys.readouterr()
    assert main(argv) == 2  # refused before converting
    err = capsys.readouterr().err
    assert "x.weights.h5' already exists; pass --overwrite" in err and "Traceback" not in err
    assert main([*argv[:-2], "--name", "y", "--out", str(tmp_path / "y.weights.h5")]) == 0
    capsys.readouterr()
    out.unlink()
    assert main(argv) == 2  # the manifest still has an entry "x"
    assert "already has an entry 'x'" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_bytes() == first
    names = [m["name"] for m in json.loads(manifest.read_text())["models"]]
    assert sorted(names) == ["x", "y"]
    assert main([*argv[:4], "--out", str(tmp_path / "z.weights.h5"), "--manifest", path]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "x.weights.h5", "y.weights.h5"]


def test_release_manifest_is_well_formed():
    from deeplab_tf.convert import parse_arch, read_manifest

    data = read_manifest(os.path.join(REPO, "weights", "manifest.json"))
    assert data["models"]
    for e in data["models"]:
        for key in ("name", "architecture", "file", "source_file", "training_data",
                    "reported_miou", "sha256"):  # fmt: skip
            assert key in e, (e.get("name"), key)
        parse_arch(e["architecture"])
        assert e["file"].endswith(".weights.h5")
        assert e["sha256"] is None or len(e["sha256"]) == 64


# --- the PyTorch port's state dict ---------------------------------------------------------------


def _port_state_dict(layers, depth, prefix="base.", old_names=False):
    """The PyTorch port's key names for a Caffe ResNet layer list (written from its module tree)."""
    from tests._caffe_reference import resnet_block_names

    counts = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    where = {}
    for stage, n in zip((2, 3, 4, 5), counts):
        for b, tag in enumerate(resnet_block_names(depth, stage, n), start=1):
            where[tag] = f"layer{stage}.block{b}"
    branch = {"1": "proj" if old_names else "shortcut", "2a": "reduce", "2b": "conv3x3",
              "2c": "increase"}  # fmt: skip
    by = {x.name: x for x in layers}
    sd = {}
    for x in layers:
        if x.type == "Convolution":
            if x.name == "conv1":
                key = "layer1.conv1.conv"
            elif x.name.startswith("fc1_"):
                i = x.name.rsplit("_c", 1)[1]
                key = f"aspp.stages.c{i}" if old_names else f"aspp.c{i}"
                sd[prefix + key + ".bias"] = x.blobs[1]
            else:
                tag, br = x.name[3:].split("_branch")
                key = f"{where[tag]}.{branch[br]}.conv"
            sd[prefix + key + ".weight"] = x.blobs[0]
        elif x.type == "BatchNorm":
            if x.name == "bn_conv1":
                key = "layer1.conv1.bn"
            else:
                tag, br = x.name[2:].split("_branch")
                key = f"{where[tag]}.{branch[br]}.bn"
            f = x.blobs[2][0]
            scale = by["scale" + x.name[2:]]
            sd[prefix + key + ".running_mean"] = x.blobs[0] / f
            sd[prefix + key + ".running_var"] = x.blobs[1] / f
            sd[prefix + key + ".weight"] = scale.blobs[0]
            sd[prefix + key + ".bias"] = scale.blobs[1]
            sd[prefix + key + ".num_batches_tracked"] = np.array(0)
    return sd


def test_pytorch_port_state_dict_mapping():
    """Both key layouts of the port (current ``base.``/``shortcut``/``aspp.c0`` and the older
    ``scale.``/``proj``/``aspp.stages.c0``) land in the right Keras variables."""
    from deeplab_tf.convert.torch_port import state_dict_to_caffe_net

    model = build_model("resnet50-aspp-l")
    for seed, old_names in ((4, False), (6, True)):
        layers = caffe_layers("resnet50-aspp-l", seed=seed)
        sd = _port_state_dict(layers, 50, prefix="scale." if old_names else "base.",
                              old_names=old_names)  # fmt: skip
        convert_caffemodel(state_dict_to_caffe_net(sd, source="port.pth"), model=model)
        assert assert_every_tensor(model, layers) == 53 + 53 + 4
    with pytest.raises(ValueError, match="not the PyTorch port's DeepLab v2 ResNet keys"):
        state_dict_to_caffe_net({"backbone.conv.weight": np.zeros(1)})


@pytest.mark.large
def test_pytorch_port_pth_file(tmp_path):
    torch = pytest.importorskip(
        "torch", reason="torch is an optional dependency (reading .pth files); not installed"
    )
    from deeplab_tf import DeepLabV2

    layers = caffe_layers("resnet50-aspp-l", seed=5)
    sd = _port_state_dict(layers, 50)
    path = tmp_path / "deeplabv2_resnet50_msc.pth"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, path)
    model = load_weights(DeepLabV2(backbone="resnet50", head="aspp_l"), str(path))
    assert assert_every_tensor(model, layers) == 110


def _small_deeplab(num_classes=3):
    from deeplab_tf import DeepLabV2

    return DeepLabV2("mobilenetv2", head="aspp", rates=(1, 2), num_classes=num_classes)


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "empty"])
def test_broken_weights_file_is_named_and_changes_nothing(tmp_path, damage):
    from deeplab_tf.convert.weights import load_weights

    model = _small_deeplab()
    good = tmp_path / "good.weights.h5"
    model.save_weights(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.weights.h5"
    blob = {
        "truncated": data[: len(data) // 2],
        "random_bytes": np.random.default_rng(0).bytes(4096),
        "empty": b"",
    }[damage]
    bad.write_bytes(blob)
    target = _small_deeplab()
    before = [w.copy() for w in target.get_weights()]
    with pytest.raises(ValueError, match=r"Cannot read the weights file '.*bad\.weights\.h5'"):
        load_weights(target, bad)
    for a, b in zip(before, target.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.large
def test_mismatched_weights_file_lists_differences_and_changes_nothing(tmp_path):
    from deeplab_tf import DeepLabV2
    from deeplab_tf.convert.weights import load_weights

    other = tmp_path / "five.weights.h5"
    _small_deeplab(num_classes=5).save_weights(other)
    target = _small_deeplab(num_classes=3)
    before = [w.copy() for w in target.get_weights()]
    with pytest.raises(ValueError) as err:
        load_weights(target, other)
    message = str(err.value)
    assert "five.weights.h5" in message and "with another shape" in message
    assert "(5,) vs model (3,)" in message and "The model was not changed" in message
    for a, b in zip(before, target.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="does not match model"):
        DeepLabV2("mobilenetv2", head="aspp", rates=(1, 2, 3), num_classes=3, weights=str(other))
    good = tmp_path / "three.weights.h5"
    source = _small_deeplab(num_classes=3)
    source.save_weights(good)
    load_weights(target, good)
    for a, b in zip(source.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "content,match",
    [
        ("{not json", "is not valid JSON"),
        ('{"models": {}}', "a 'models' list"),
        ('{"models": [42]}', r"models\[0\] must be an object"),
        ('{"models": [{"name": "x", "sha256": "abc"}]}', "64 hex digits"),
    ],
)
def test_cli_bad_manifest_is_refused_before_writing(vgg_largefov, tmp_path, capsys, content, match):
    from deeplab_tf.cli import main

    path, _ = vgg_largefov
    out = tmp_path / "w" / "vgg.weights.h5"
    manifest = tmp_path / "manifest.json"
    manifest.write_text(content)
    argv = ["convert-caffe", path, "--arch", "vgg16-largefov", "--out", str(out),
            "--manifest", str(manifest)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "deeplab-tf: error: --manifest" in err
    assert re.search(match, err), err
    assert not out.exists() and not out.parent.exists()
    assert manifest.read_text() == content
    assert main([*argv[:-1], str(tmp_path)]) == 2
    assert "--manifest is a folder" in capsys.readouterr().err
