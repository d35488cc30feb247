"""Pretrained weights presets: resumable verified downloads through the mirror setting, the
cache (records, locks, offline second use), bad cases, preset folders and the CLI.

Everything is served from a local HTTP server on 127.0.0.1 that each test starts and stops
(tests/_http_server.py); nothing is downloaded from the internet. The full-size presets
(ResNet-101 built, 170 MB files converted) are in tests/test_presets_large.py.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tests._http_server import serve_folder

VOC = "deeplabv2_resnet101_voc12"
STUFF = "deeplabv2_resnet101_cocostuff164k"
STUFF_FILE = "deeplabv2_resnet101_msc-cocostuff164k-100000.pth"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty weights cache and no mirror."""
    root = tmp_path / "cache"
    monkeypatch.setenv("DEEPLAB_TF_CACHE", str(root))
    monkeypatch.delenv("DEEPLAB_TF_WEIGHTS_MIRROR", raising=False)
    return root


def _blob(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _sha(data):
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _release_zip(folder, members):
    """A release-shaped ``prototxt_and_model.zip`` holding ``members`` (name -> bytes)."""
    path = folder / "prototxt_and_model.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("deploy.prototxt", "name: 'DeepLab v2'\n")
        for name, data in members.items():
            z.writestr(name, data)
    return path


# --- downloads -----------------------------------------------------------------------------


def test_download_resumes_after_the_connection_drops(tmp_path):
    from deeplab_tf.weights.download import DownloadError, download

    site = tmp_path / "site"
    site.mkdir()
    data = _blob(300_000)
    (site / "f.bin").write_bytes(data)
    dest = tmp_path / "out" / "f.bin"
    with serve_folder(site, drop_after={"f.bin": 100_000}) as (url, log):
        with pytest.raises(DownloadError, match="100000 of 300000 bytes"):
            download(url + "f.bin", dest, retries=0, quiet=True)
        assert not dest.exists()  # only complete files under the real name
        assert os.path.getsize(str(dest) + ".part") == 100_000
        download(url + "f.bin", dest, sha256=_sha(data), retries=0, quiet=True)
    assert dest.read_bytes() == data
    assert not os.path.exists(str(dest) + ".part")
    assert log == [("f.bin", None), ("f.bin", "bytes=100000-")]  # resumed, not restarted


def test_download_retries_within_one_call_and_restarts_without_range_support(tmp_path):
    from deeplab_tf.weights.download import download

    site = tmp_path / "site"
    site.mkdir()
    data = _blob(200_000, 1)
    (site / "f.bin").write_bytes(data)
    with serve_folder(site, drop_after={"f.bin": 50_000}, ranges=False) as (url, log):
        download(url + "f.bin", tmp_path / "f.bin", sha256=_sha(data), retries=1, quiet=True)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert len(log) == 2  # the server ignored the range: the second attempt started over


def test_hash_mismatch_keeps_nothing(tmp_path):
    from deeplab_tf.weights import ChecksumError
    from deeplab_tf.weights.download import download

    site = tmp_path / "site"
    site.mkdir()
    (site / "f.bin").write_bytes(_blob(1000))
    dest = tmp_path / "f.bin"
    with serve_folder(site) as (url, _):
        with pytest.raises(ChecksumError, match="expected " + "0" * 64):
            download(url + "f.bin", dest, sha256="0" * 64, quiet=True)
    assert not dest.exists() and not os.path.exists(str(dest) + ".part")


def test_http_error_and_unreachable_server_name_the_address(tmp_path):
    from deeplab_tf.weights.download import DownloadError, download

    with serve_folder(tmp_path) as (url, _):
        with pytest.raises(DownloadError, match=r"missing\.bin: HTTP 404"):
            download(url + "missing.bin", tmp_path / "x", retries=0, quiet=True)
    with pytest.raises(DownloadError, match="cannot connect"):
        download(url + "missing.bin", tmp_path / "x", retries=0, quiet=True, timeout=2)


def test_disk_full_mid_download_leaves_nothing_and_says_so(tmp_path, monkeypatch):
    from deeplab_tf.weights import download as module

    site = tmp_path / "site"
    site.mkdir()
    (site / "f.bin").write_bytes(_blob(300_000))
    real_open = open

    class Full(io.FileIO):
        written = 0

        def write(self, b):
            Full.written += len(b)
            if Full.written > 64_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(b)

    def fake_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(".part") and "b" in mode:
            return Full(path, mode.replace("b", ""))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(module, "open", fake_open, raising=False)
    dest = tmp_path / "f.bin"
    with serve_folder(site) as (url, _):
        with pytest.raises(OSError, match="No space left on the device") as err:
            module.download(url + "f.bin", dest, retries=0, quiet=True)
    assert err.value.errno == errno.ENOSPC
    assert not dest.exists() and not os.path.exists(str(dest) + ".part")


def test_mirror_setting_replaces_the_address(tmp_path, monkeypatch):
    from deeplab_tf.weights.download import source_address

    monkeypatch.delenv("DEEPLAB_TF_WEIGHTS_MIRROR", raising=False)
    assert source_address("http://a/b/c.zip", "c.zip") == "http://a/b/c.zip"
    with pytest.raises(ValueError, match="no known download address.*DEEPLAB_TF_WEIGHTS_MIRROR"):
        source_address(None, "train_iter_20000.caffemodel")
    monkeypatch.setenv("DEEPLAB_TF_WEIGHTS_MIRROR", "http://mirror.local/weights/")
    assert source_address("http://a/b/c.zip", "c.zip") == "http://mirror.local/weights/c.zip"
    monkeypatch.setenv("DEEPLAB_TF_WEIGHTS_MIRROR", str(tmp_path))
    assert source_address(None, "x.caffemodel") == str(tmp_path / "x.caffemodel")


# --- the cache -------------------------------------------------------------------------------


def test_fetch_records_the_hash_then_works_offline_and_refuses_a_changed_file(
    cache, tmp_path, monkeypatch
):
    from deeplab_tf.weights import ChecksumError
    from deeplab_tf.weights.cache import fetch_source, read_records, verify_preset

    site = tmp_path / "site"
    site.mkdir()
    data = _blob(50_000, 2)
    (site / STUFF_FILE).write_bytes(data)
    with serve_folder(site) as (url, log):
        monkeypatch.setenv("DEEPLAB_TF_WEIGHTS_MIRROR", url)
        path = fetch_source(STUFF, quiet=True)
    assert open(path, "rb").read() == data
    record = read_records()[f"downloads/{STUFF_FILE}"]
    assert record["sha256"] == _sha(data) and record["size"] == len(data)
    assert record["source"] == url + STUFF_FILE
    # The server is gone: the second call is offline.
    assert fetch_source(STUFF, quiet=True) == path
    assert len(log) == 1
    assert list(verify_preset(STUFF).values()) == [_sha(data)]
    with open(path, "r+b") as f:  # the file changes in the cache
        f.write(b"\0\0\0\0")
    with pytest.raises(ChecksumError, match="recorded on its first download"):
        fetch_source(STUFF, quiet=True)
    with pytest.raises(ChecksumError):
        verify_preset(STUFF)


def test_archive_member_unpacked_once_and_corrupt_archive_removed(cache, tmp_path, monkeypatch):
    from deeplab_tf.weights.cache import cache_dir, fetch_source, read_records

    site = tmp_path / "site"
    site.mkdir()
    member, member2 = _blob(40_000, 3), _blob(30_000, 5)
    members = {"train_iter_20000.caffemodel": member, "train2_iter_20000.caffemodel": member2}
    good = _release_zip(site, members).read_bytes()
    (site / "prototxt_and_model.zip").write_bytes(good[: len(good) // 2])  # truncated
    with serve_folder(site) as (url, log):
        monkeypatch.setenv("DEEPLAB_TF_WEIGHTS_MIRROR", url)
        with pytest.raises(ValueError, match="truncated or corrupt.*removed"):
            fetch_source(VOC, quiet=True)
        assert not os.path.exists(os.path.join(cache_dir(), "downloads", "prototxt_and_model.zip"))
        assert "downloads/prototxt_and_model.zip" not in read_records()
        (site / "prototxt_and_model.zip").write_bytes(good)
        path = fetch_source(VOC, quiet=True)
        assert open(path, "rb").read() == member
        assert path.endswith(os.path.join("sources", VOC, "train_iter_20000.caffemodel"))
        assert fetch_source(VOC, quiet=True) == path
        # the trainval preset's file is in the same archive: unpacked without a download
        other = fetch_source("deeplabv2_resnet101_voc12_trainval", quiet=True)
        assert open(other, "rb").read() == member2
        assert [name for name, _ in log] == ["prototxt_and_model.zip"] * 2
    records = read_records()
    assert records[f"sources/{VOC}/train_iter_20000.caffemodel"]["sha256"] == _sha(member)
    names = sorted(os.listdir(cache_dir()))
    assert names == ["downloads", "locks", "records.json", "sources"]  # no temporaries left


def test_archive_without_the_member_is_a_clear_error(cache, tmp_path, monkeypatch):
    from deeplab_tf.weights.cache import fetch_source

    site = tmp_path / "site"
    site.mkdir()
    _release_zip(site, {"other.caffemodel": b"x"})
    monkeypatch.setenv("DEEPLAB_TF_WEIGHTS_MIRROR", str(site))  # a local mirror folder
    with pytest.raises(ValueError, match="holds 0 files named 'train_iter_20000.caffemodel'"):
        fetch_source(VOC, quiet=True)


def test_preset_without_an_address_explains_how_to_get_it(cache):
    from deeplab_tf.weights.cache import fetch_source

    with pytest.raises(ValueError, match="no known download address.*weights="):
        fetch_source("deeplabv2_vgg16_largefov_voc12", quiet=True)
    assert not os.path.exists(os.path.join(str(cache), "downloads"))


@pytest.mark.multiprocess
def test_two_processes_fetching_at_once_download_once(cache, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    data = _blob(400_000, 4)
    (site / STUFF_FILE).write_bytes(data)
    code = (
        "import sys; from deeplab_tf.weights.cache import fetch_source; "
        f"print(fetch_source({STUFF!r}, quiet=True))"
    )
    with serve_folder(site, delay=0.01) as (url, log):
        env = {**os.environ, "DEEPLAB_TF_CACHE": str(cache), "DEEPLAB_TF_WEIGHTS_MIRROR": url}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(paths) == 1
    assert open(paths.pop(), "rb").read() == data
    assert len(log) == 1  # the second process waited on the lock and found the file


# --- presets as data -----------------------------------------------------------------------


def test_presets_list_and_lookup_by_tag():
    import deeplab_tf
    from deeplab_tf.weights.presets import resolve_preset

    presets = {p["name"]: p for p in deeplab_tf.list_presets()}
    assert {VOC, STUFF, "deeplabv2_resnet101_coco_init"} <= set(presets)
    assert presets[STUFF]["num_classes"] == 182
    assert presets[STUFF]["reported_miou"]["no_crf"] == 39.1
    assert presets[VOC]["reported_miou"]["crf"] == 77.69
    assert "inflated" in presets["deeplabv2_resnet101_voc12_trainval"]["warning"]
    for p in presets.values():
        assert deeplab_tf.get_model_config(p["model"])["backbone"] == p["backbone"]
    assert resolve_preset("voc12", "resnet101", "aspp_l")["name"] == VOC
    assert resolve_preset("voc12", "vgg16", "largefov")["name"] == "deeplabv2_vgg16_largefov_voc12"
    with pytest.raises(ValueError, match="No weights preset 'voc12' for a mobilenetv2"):
        resolve_preset("voc12", "mobilenetv2", "aspp_l")
    with pytest.raises(ValueError, match="is for a resnet101 aspp_l model; this model is vgg16"):
        resolve_preset(VOC, "vgg16", "largefov")


def test_cocostuff_and_voc_label_sets():
    from deeplab_tf.data.palettes import COCOSTUFF_UNUSED, label_set

    names, palette = label_set("cocostuff")
    assert len(names) == 182 and len(names) - len(COCOSTUFF_UNUSED) == 171
    assert names[0] == "person" and names[91] == "banner" and names[181] == "wood"
    assert len({tuple(c) for c in palette[:182]}) == 182  # distinct colours
    assert tuple(palette[255]) == (0, 0, 0)
    assert label_set("voc")[0][15] == "person"
    with pytest.raises(ValueError, match="Unknown label set 'ade'"):
        label_set("ade")


def test_model_refuses_a_preset_of_another_architecture_before_building():
    from deeplab_tf import DeepLabV2

    with pytest.raises(ValueError, match="No weights preset 'cocostuff164k' for a mobilenetv2"):
        DeepLabV2(backbone="mobilenetv2", head="aspp_l", weights="cocostuff164k")
    with pytest.raises(ValueError, match="weights must be None, 'imagenet', a weights preset"):
        DeepLabV2(backbone="mobilenetv2", head="aspp_l", weights="no-such-thing")


# --- preset folders ----------------------------------------------------------------------------


def _tiny():
    from deeplab_tf import DeepLabV2

    return DeepLabV2("mobilenetv2", head="aspp", rates=(1, 2), num_classes=3, name="mine")


@pytest.mark.large
def test_save_to_preset_and_from_preset_round_trip(tmp_path):
    import deeplab_tf
    from deeplab_tf import DeepLabV2
    from deeplab_tf.weights import ChecksumError

    model = _tiny()
    folder = tmp_path / "mine"
    deeplab_tf.save_to_preset(model, folder, class_names=["sky", "road", "car"])
    assert sorted(os.listdir(folder)) == ["config.json", "metadata.json", "model.weights.h5"]
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["class_names"] == ["sky", "road", "car"]
    again = DeepLabV2.from_preset(str(folder))
    assert isinstance(again, DeepLabV2) and again.get_config() == model.get_config()
    for a, b in zip(model.weights, again.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert again.preset["class_names"] == ["sky", "road", "car"]
    with pytest.raises(FileExistsError, match="already exists"):
        deeplab_tf.save_to_preset(model, folder)
    with pytest.raises(ValueError, match="class_names has 2 names; the model has 3"):
        deeplab_tf.save_to_preset(model, tmp_path / "x", class_names=["a", "b"])
    assert not (tmp_path / "x").exists()
    data = (folder / "model.weights.h5").read_bytes()
    (folder / "model.weights.h5").write_bytes(data[:-16] + b"\1" * 16)
    with pytest.raises(ChecksumError, match="differs from the one in"):
        DeepLabV2.from_preset(str(folder))
    with pytest.raises(ValueError, match="not a preset folder: config.json is missing"):
        DeepLabV2.from_preset(str(tmp_path))


@pytest.mark.multiprocess
def test_preset_folder_loads_in_a_new_process(tmp_path):
    import deeplab_tf

    model = _tiny()
    folder = tmp_path / "mine"
    deeplab_tf.save_to_preset(model, folder)
    x = np.random.default_rng(0).uniform(0, 255, (1, 33, 33, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    code = (
        "import numpy as np, sys; from deeplab_tf import DeepLabV2; "
        "m = DeepLabV2.from_preset(sys.argv[1]); x = np.load(sys.argv[2]); "
        "np.testing.assert_allclose(m.predict(x, verbose=0), np.load(sys.argv[3]), atol=1e-5); "
        "print(m.name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("mine")


# --- the command line --------------------------------------------------------------------------


def test_weights_cli_list_path_and_verify(cache, capsys):
    from deeplab_tf.cli import main

    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert STUFF in out and "39.10/39.70" in out and "76.35/77.69" in out
    assert main(["weights", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {p["name"] for p in listed} >= {VOC, STUFF}
    assert main(["weights", "path", STUFF]) == 2
    assert "is not in the cache" in capsys.readouterr().err
    assert main(["weights", "verify", "nope"]) == 2
    assert "Unknown weights preset 'nope'" in capsys.readouterr().err
    assert main(["weights", "fetch", "deeplabv2_vgg16_aspp_l_voc12", "--quiet"]) == 2
    assert "no known download address" in capsys.readouterr().err


def test_readme_table_lists_every_preset_with_its_reported_numbers():
    import pathlib

    from deeplab_tf.weights.presets import list_presets

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("## Pretrained weights", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("`")[1]: line for line in table.splitlines() if line.startswith("| `")}
    assert set(rows) == {p["name"] for p in list_presets()}
    for p in list_presets():
        row = rows[p["name"]]
        assert f"(`{p['tag']}`)" in row
        assert (str(p["num_classes"]) if p["num_classes"] else "any") in row
        for key in ("no_crf", "crf"):
            value = (p["reported_miou"] or {}).get(key)
            if value is not None:
                assert f"{value:g}" in row, (p["name"], key, value)
