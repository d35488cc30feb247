"""examples/ cannot rot: each script runs on tiny inputs, serve.md matches a real export and its
clients run against it, and the Colab notebook's code executes end to end.

* ``train_voc.py`` trains two steps on a fake VOC + SBD tree (``tests/_data_utils.py``).
* ``predict.py`` segments generated images with a small saved ``.keras`` model; its label PNGs
  are checked against an independent MultiScaleInference (+ CRF) computation.
* ``serve.md``: its signature table must equal the export's signatures exactly, every quoted
  name in its code must exist, its ``deeplab-tf export`` commands run, and its Python and curl
  clients run against the SavedModel through stand-ins for TF Serving's REST and gRPC front
  ends that follow TF Serving's JSON rules (row/columnar forms, ``{"b64": ...}``, ``_bytes``).
* ``colab_quickstart.ipynb`` is what ``_make_notebook.py`` writes, is valid nbformat v4, and its
  code cells run as written (no shell or magic lines) in a new virtual environment that does
  not have ``deeplab_tf``: the install cell pip-installs this checkout (``DEEPLAB_TF_SOURCE``),
  then every cell runs with ``DEEPLAB_TINY=1``, including the VOC cell on a fake tree and the
  export with warm-up requests.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests import _data_utils as du

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
NUM_CLASSES = 5


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="-1")
    env.update(extra)
    return env


def _fake_voc_sbd(root, rng):
    """VOC 2012 (train 2, val 1) + SBD (train 2, val 1): train_aug has 4 images."""
    voc, _ = du.make_voc(root, ["2007_000032", "2007_000039"], ["2007_000033"], rng)
    sbd_only = ["2008_000002", "2008_000003"]
    for i in sbd_only:
        du.write_jpeg(os.path.join(voc, "JPEGImages", f"{i}.jpg"), du.smooth_image(rng, 20, 24))
    du.make_sbd(root, ["2008_000002"], ["2008_000003"], rng)
    return root


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    """A small trained-shape DeepLab (MobileNetV2, 5 classes) saved as ``.keras``."""
    import keras

    import deeplab_tf

    keras.utils.set_random_seed(0)
    model = deeplab_tf.DeepLabV2(
        backbone="mobilenetv2", head="aspp", rates=(1, 2), num_classes=NUM_CLASSES
    )
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    model.save(path)
    return path


def _photo(path, size=(40, 56), seed=0):
    image = du.smooth_image(np.random.default_rng(seed), *size)
    Image.fromarray(image).save(path)
    return np.asarray(Image.open(path).convert("RGB"))


# === train_voc.py ===


@pytest.mark.multiprocess
def test_example_scripts_help():
    for name, flag in (("train_voc.py", "--workdir"), ("predict.py", "--crf")):
        # --help answers without importing TensorFlow (the script is importable and cheap).
        code = (
            "import runpy, sys\n"
            f"sys.argv = [{name!r}, '--help']\n"
            "try:\n"
            f"    runpy.run_path({os.path.join(EXAMPLES, name)!r}, run_name='__main__')\n"
            "except SystemExit as exit:\n"
            "    assert exit.code == 0, exit.code\n"
            "assert 'tensorflow' not in sys.modules, 'imported TensorFlow for --help'\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("usage:") and flag in out.stdout


def test_train_voc_config_is_the_paper_recipe(tmp_path):
    train_voc = _load_example("train_voc.py")
    from deeplab_tf.training import resolve_config

    args = train_voc.parse_args(["--root", str(tmp_path), "--workdir", str(tmp_path / "w")])
    cfg = resolve_config(train_voc.build_config(args))
    assert cfg["model"]["name"] == "deeplabv2_resnet101_aspp_l"
    assert cfg["model"]["weights"] == "imagenet" and cfg["model"]["freeze_batchnorm"] is True
    t = cfg["train"]
    assert (t["steps"], t["batch_size"], t["accumulation_steps"], t["crop_size"]) == (
        20000,
        5,
        2,
        321,
    )
    assert t["msc"] is True and list(t["msc_scales"]) == [1.0, 0.75, 0.5]
    assert t["base_lr"] == 2.5e-4 and t["power"] == 0.9 and t["momentum"] == 0.9
    assert t["weight_decay"] == 5e-4 and t["optimizer"] == "caffe_sgd"
    assert cfg["data"]["name"] == "voc2012_aug" and cfg["data"]["train"]["split"] == "train_aug"
    assert cfg["data"]["root"] == str(tmp_path)
    with pytest.raises(SystemExit):
        train_voc.parse_args(["--root", str(tmp_path / "missing"), "--workdir", "w"])
    with pytest.raises(SystemExit):
        train_voc.parse_args(["--root", str(tmp_path), "--workdir", "w", "--steps", "0"])


@pytest.mark.large
def test_train_voc_two_steps_on_fake_voc_sbd(tmp_path, capsys):
    root = _fake_voc_sbd(str(tmp_path / "data"), np.random.default_rng(0))
    workdir = tmp_path / "run"
    train_voc = _load_example("train_voc.py")
    argv = ["--root", root, "--workdir", str(workdir), "--backbone", "mobilenetv2"]
    argv += ["--weights", "none", "--crop-size", "48", "--batch-size", "2"]
    argv += ["--accumulation-steps", "1", "--steps", "2", "--no-tensorboard"]
    argv += ["--no-msc", "--val-crop-size", "48", "--val-examples", "1"]
    assert train_voc.main(argv) == 0
    printed = capsys.readouterr().out
    assert "deeplabv2_mobilenetv2_aspp_l" in printed and "MSC off" in printed
    import keras

    model = keras.saving.load_model(str(workdir / "model.keras"), compile=False)
    assert model.output_shape[-1] == 21
    assert "val_mean_iou" in printed  # validated on VOC val
    # A bad tree is a clean error, not a traceback.
    empty = tmp_path / "empty"
    (empty / "VOCdevkit" / "VOC2012" / "JPEGImages").mkdir(parents=True)
    assert train_voc.main(["--root", str(empty), "--workdir", str(tmp_path / "r2")]) == 2
    assert "error" in capsys.readouterr().err


# === predict.py ===


@pytest.mark.large
def test_predict_writes_overlays_matching_the_library(tmp_path, tiny_model_path):
    import keras

    import deeplab_tf
    from deeplab_tf.data.palettes import voc_palette
    from deeplab_tf.visualize import overlay

    photos = tmp_path / "photos"
    photos.mkdir()
    images = {"a": _photo(str(photos / "a.png"), (24, 40), 1)}
    (photos / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    predict = _load_example("predict.py")
    argv = [str(photos), "--model", tiny_model_path, "--out", str(out), "--scales", "1", "0.75"]
    rc = predict.main(argv + ["--crf", "--crf-iterations", "2"])
    assert rc == 1  # broken.jpg reported, the others written
    names = sorted(os.listdir(out))
    assert names == ["a.png", "a_overlay.png", "a_overlay_before_crf.png"]
    net = keras.saving.load_model(tiny_model_path, compile=False)
    msc = deeplab_tf.MultiScaleInference(net, scales=(1.0, 0.75))
    crf = deeplab_tf.DenseCRF.from_preset("resnet101", iterations=2)
    for stem, image in images.items():
        probs = msc(image[None]).numpy()
        expected = crf(image[None], probs).numpy()[0].argmax(-1)
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode == "P"
            np.testing.assert_array_equal(np.asarray(im), expected)
        with Image.open(out / f"{stem}_overlay.png") as im:
            assert im.size == (image.shape[1], image.shape[0]) and im.mode == "RGB"
        with Image.open(out / f"{stem}_overlay_before_crf.png") as im:  # the MSC labels
            expected = overlay(image, probs[0].argmax(-1).astype(np.uint8), voc_palette())
            np.testing.assert_array_equal(np.asarray(im), expected)
    # Without --crf: MultiScaleInference's argmax, on a JPEG input decoded as the script does.
    out2 = tmp_path / "out2"
    jpeg = _photo(str(photos / "c.jpg"), (20, 28), 2)
    argv = [str(photos / "c.jpg"), "--model", tiny_model_path, "--out", str(out2)]
    assert predict.main(argv) == 0
    assert sorted(os.listdir(out2)) == ["c.png", "c_overlay.png"]
    with Image.open(out2 / "c.png") as im:
        expected = deeplab_tf.MultiScaleInference(net, scales=(1.0,))(jpeg[None]).numpy()
        np.testing.assert_array_equal(np.asarray(im), expected[0].argmax(-1))
    assert predict.main([str(tmp_path / "nothing*.png"), "--model", "x", "--out", "o"]) == 2


# === serve.md ===

SERVE_MD = os.path.join(EXAMPLES, "serve.md")
REST_KEYS = {"signature_name", "instances", "inputs", "outputs", "predictions", "b64"}


def _code_blocks(text):
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)]


def _signature_table(text):
    """``{signature: (inputs, outputs)}`` from serve.md's table (backticked names)."""
    table = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`serving_"):
            continue
        sig = re.match(r"`(\w+)`", cells[0]).group(1)
        ins = set(re.findall(r"`(\w+)`", cells[1]))
        outs = set(re.findall(r"`(\w+)`", cells[2]))
        table[sig] = (ins, outs)
    return table


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_path):
    """The export serve.md's first command writes (run through the CLI), loaded."""
    import tensorflow as tf

    from deeplab_tf.cli import build_parser
    from deeplab_tf.cli import main as cli_main

    text = open(SERVE_MD, encoding="utf-8").read()
    base = str(tmp_path_factory.mktemp("serving") / "deeplab")
    commands = [
        line
        for lang, body in _code_blocks(text)
        if lang == "bash"
        for line in body.replace("\\\n", " ").splitlines()
        if line.strip().startswith("deeplab-tf export")
    ]
    assert len(commands) == 2, commands
    parser = build_parser()
    for i, command in enumerate(commands):
        argv = command.split()[1:]
        argv = [base if a == "/models/deeplab" else a for a in argv]
        parser.parse_args(argv)  # every documented flag exists
        if i == 0:  # the .keras one: run it
            argv[1] = tiny_model_path
            assert cli_main(argv) == 0
    path = os.path.join(base, "1")
    return text, base, tf.saved_model.load(path)


def _signature_names(loaded):
    names = {}
    for sig, fn in loaded.signatures.items():
        names[sig] = (set(fn.structured_input_signature[1]), set(fn.structured_outputs))
    return names


@pytest.mark.large
def test_serve_md_names_match_the_export(served):
    text, _, loaded = served
    real = _signature_names(loaded)
    from deeplab_tf.export.savedmodel import SIGNATURES

    assert set(real) == set(SIGNATURES)  # exported with --crf: all four
    assert _signature_table(text) == real
    code = "\n".join(body for _, body in _code_blocks(text)).replace('\\"', '"')
    all_names = set().union(*(ins | outs for ins, outs in real.values()))
    keys = set(re.findall(r'\[\s*"(\w+)"\s*\]', code)) | set(re.findall(r'"(\w+)"\s*:', code))
    keys |= set(re.findall(r"\b(\w+)=tf\.constant", code))
    unknown = keys - all_names - REST_KEYS - set(real)
    assert not unknown, f"serve.md code uses names the export does not have: {sorted(unknown)}"
    for sig in set(re.findall(r"\bserving_\w+", text)):
        assert sig in real, sig
    assert {"image_bytes", "label_png_bytes", "labels", "images"} <= keys  # the checks really scan


class _FakeResponse:
    def __init__(self, payload):
        self._text = json.dumps(payload)
        self.status_code = 200

    def raise_for_status(self):
        pass

    def json(self):
        return json.loads(self._text)


def _unb64(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_unb64(v) for v in value]
    return value


def _to_json(name, array):
    """A tensor as TF Serving's REST API writes it (strings b64 only for ``*_bytes``)."""

    def convert(v):
        if isinstance(v, list):
            return [convert(x) for x in v]
        if isinstance(v, bytes):
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(v).decode("ascii")}
            return v.decode("utf-8", errors="replace")
        return v

    return convert(np.asarray(array).tolist())


def rest_predict(loaded, url, body):
    """TF Serving's ``:predict`` REST endpoint, row and columnar forms."""
    import tensorflow as tf

    assert re.fullmatch(r"http://localhost:8501/v1/models/deeplab(/versions/\d+)?:predict", url)
    body = json.loads(json.dumps(body))  # what goes over the wire
    sig = loaded.signatures[body.get("signature_name", "serving_default")]
    specs = sig.structured_input_signature[1]
    assert ("instances" in body) != ("inputs" in body)
    if "instances" in body:
        rows = body["instances"]
        if len(specs) == 1:
            values = {next(iter(specs)): [_unb64(r) for r in rows]}
        else:
            values = {k: [_unb64(r[k]) for r in rows] for k in specs}
    else:
        given = body["inputs"]
        if len(specs) == 1 and not (isinstance(given, dict) and set(given) <= set(specs)):
            given = {next(iter(specs)): given}
        assert set(given) == set(specs), (set(given), set(specs))
        values = {k: _unb64(v) for k, v in given.items()}
    out = sig(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in values.items()})
    out = {k: v.numpy() for k, v in out.items()}
    if "instances" in body:
        n = len(body["instances"])
        rows = [{k: _to_json(k, v[i]) for k, v in out.items()} for i in range(n)]
        return {"predictions": rows if len(out) > 1 else [next(iter(r.values())) for r in rows]}
    cols = {k: _to_json(k, v) for k, v in out.items()}
    return {"outputs": cols if len(out) > 1 else next(iter(cols.values()))}


def _fake_stub_class(loaded):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    class Stub:
        def __init__(self, channel):
            self.channel = channel

        def Predict(self, request, timeout=None):  # noqa: N802 (the gRPC method's name)
            assert request.model_spec.name == "deeplab"
            sig = loaded.signatures[request.model_spec.signature_name or "serving_default"]
            specs = sig.structured_input_signature[1]
            assert set(request.inputs) == set(specs)
            inputs = {
                k: tf.constant(tf.make_ndarray(v), dtype=specs[k].dtype)
                for k, v in request.inputs.items()
            }
            response = predict_pb2.PredictResponse()
            for k, v in sig(**inputs).items():
                if not request.output_filter or k in request.output_filter:
                    response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
            return response

    return Stub


@pytest.mark.multiprocess
def test_serve_md_clients_run_against_the_export(served, tmp_path, monkeypatch):
    import grpc
    import requests
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    text, base, loaded = served
    photo = _photo(str(tmp_path / "photo.jpg"), (36, 52), 3)
    monkeypatch.chdir(tmp_path)
    calls = []

    def post(url, json=None, timeout=None, **kw):
        calls.append(json["signature_name"])
        return _FakeResponse(rest_predict(loaded, url, json))

    monkeypatch.setattr(requests, "post", post)
    monkeypatch.setattr(grpc, "insecure_channel", lambda target, options=None: target)
    monkeypatch.setattr(
        prediction_service_pb2_grpc, "PredictionServiceStub", _fake_stub_class(loaded)
    )
    blocks = [b for lang, b in _code_blocks(text) if lang == "python"]
    assert len(blocks) == 4
    for block in blocks:
        namespace = {"__name__": "serve_md"}
        block = block.replace('"/models/deeplab/', f'"{base}/')  # not the REST URL's path
        exec(compile(block, "serve.md", "exec"), namespace)
        if "labels" in namespace:
            labels = np.asarray(namespace["labels"])
            assert labels.shape[:2] == photo.shape[:2], labels.shape
            assert labels.min() >= 0 and labels.max() < NUM_CLASSES
    assert calls == ["serving_bytes", "serving_default"]
    # gRPC wrote the PNG label map at the photo's size.
    with Image.open(tmp_path / "photo_labels.png") as im:
        assert im.size == (photo.shape[1], photo.shape[0]) and im.mode == "L"

    # The curl request body the shell snippet writes is valid and answers per TF Serving rules.
    shell = next(b for lang, b in _code_blocks(text) if lang == "bash" and "request.json" in b)
    echo = shell.split("> request.json")[0].replace("\\\n", " ") + "> request.json"
    subprocess.run(["bash", "-c", echo], check=True, cwd=tmp_path)
    body = json.loads((tmp_path / "request.json").read_text())
    answer = rest_predict(loaded, "http://localhost:8501/v1/models/deeplab:predict", body)
    prediction = answer["predictions"][0]
    assert (prediction["heights"], prediction["widths"]) == photo.shape[:2]
    # label_png_bytes ends in "_bytes", so TF Serving's REST sends it as {"b64": ...}: a PNG
    # label map at the photo's size.
    png = base64.b64decode(prediction["label_png_bytes"]["b64"])
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (photo.shape[1], photo.shape[0])


# === colab_quickstart.ipynb ===

NOTEBOOK = os.path.join(EXAMPLES, "colab_quickstart.ipynb")


@pytest.mark.multiprocess
def test_notebook_is_generated_and_valid(tmp_path):
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    out = tmp_path / "regen.ipynb"
    subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "_make_notebook.py"), str(out)],
        check=True,
        capture_output=True,
        env=_env(),
    )
    assert out.read_text() == open(NOTEBOOK, encoding="utf-8").read(), (
        "colab_quickstart.ipynb is stale: run python examples/_make_notebook.py"
    )
    sources = "\n".join(c.source for c in nb.cells)
    for needle in (
        "pip_command(spec)",
        "DEEPLAB_TF_SOURCE",
        "model.fit",
        "MultiScaleInference",
        "DenseCRF",
        "export_saved_model",
    ):
        assert needle in sources, needle
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


class _NotebookRun:
    """The notebook's code cells as a script, running in a subprocess (started once)."""

    def __init__(self, workdir):
        import nbformat

        nb = nbformat.read(NOTEBOOK, as_version=4)
        cells = [cell.source for cell in nb.cells if cell.cell_type == "code"]
        shell = [ln for c in cells for ln in c.splitlines() if ln.lstrip()[:1] in ("!", "%")]
        assert not shell, f"the notebook must run as plain Python: {shell}"
        script = workdir / "notebook.py"
        script.write_text("\n\n".join(cells) + "\nprint('NOTEBOOK-DONE')\n")
        voc_root = _fake_voc_sbd(str(workdir / "voc"), np.random.default_rng(1))
        self.out_dir = workdir / "out"
        self.log = open(workdir / "log.txt", "w+")
        # A new environment without deeplab_tf (TensorFlow and the other dependencies come from
        # this one, so that the install cell only builds and installs the checkout).
        self.venv = venv = workdir / "venv"
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True
        )
        python = str(venv / "bin" / "python")
        env = _env(
            DEEPLAB_TINY="1",
            DEEPLAB_OUT=str(self.out_dir),
            DEEPLAB_VOC_ROOT=voc_root,
            DEEPLAB_TF_SOURCE=ROOT,
            PIP_DISABLE_PIP_VERSION_CHECK="1",
        )
        env.pop("PYTHONPATH")  # the notebook must import the copy its install cell installed
        self.process = subprocess.Popen(
            [python, str(script)],
            cwd=workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    def wait(self, timeout=900):
        returncode = self.process.wait(timeout=timeout)
        self.log.seek(0)
        return returncode, self.log.read()

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory):
    run = _NotebookRun(tmp_path_factory.mktemp("notebook"))
    yield run
    run.close()


@pytest.fixture(scope="module", autouse=True)
def _start_notebook_early(request):
    """Starts the notebook subprocess when the module starts, so that it overlaps the other
    tests (mostly single-threaded graph tracing) on the second core; not under xdist."""
    selected = any(item.name == "test_notebook_code_runs_tiny" for item in request.session.items)
    if selected and "PYTEST_XDIST_WORKER" not in os.environ:
        request.getfixturevalue("notebook_run")


@pytest.mark.large
@pytest.mark.multiprocess
def test_notebook_code_runs_tiny(notebook_run):
    returncode, output = notebook_run.wait()
    assert returncode == 0, output[-5000:]
    assert "NOTEBOOK-DONE" in output
    assert f"-m pip install -q {ROOT}" in output  # the install cell installed this checkout
    where = re.search(r"deeplab_tf \S+ imported from (\S+)", output)
    assert where and where.group(1).startswith(str(notebook_run.venv)), output[-3000:]
    assert "skipping the VOC section" not in output  # the VOC cell ran on the fake tree
    agree = re.search(r"served labels \(\d+, \d+\): ([\d.]+)% equal", output)
    assert agree and float(agree.group(1)) >= 99.0, output[-2000:]  # served == Keras
    out_dir = notebook_run.out_dir
    assert (out_dir / "serving" / "1" / "saved_model.pb").is_file()
    assert (out_dir / "serving" / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert (out_dir / "samples.png").is_file() and (out_dir / "model.keras").is_file()
