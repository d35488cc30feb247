"""The torch-free ``.pth`` reader: equal to ``torch.load`` on both of PyTorch's formats, and a
pickle that names any other global is refused without running it."""

from __future__ import annotations

import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from deeplab_tf.weights import UnsafePickleError, read_pth


def _torch():
    return pytest.importorskip("torch", reason="torch writes the reference files")


def _state(torch):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return collections.OrderedDict(
        weight=base, transposed=base.t(), sliced=base[1:, 2:5],  # views with offset and strides
        half=torch.randn(3, 3).half(), bf16=torch.randn(5).bfloat16(),
        long=torch.arange(7), flag=torch.tensor([True, False]), scalar=torch.tensor(3.5),
        param=torch.nn.Parameter(torch.ones(2, 2)),
    )  # fmt: skip


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_equal_to_torch_load_tensor_by_tensor(tmp_path, zip_format):
    torch = _torch()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": _state(torch), "iteration": 20000}, path,
               _use_new_zipfile_serialization=zip_format)  # fmt: skip
    got = read_pth(path)
    ref = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert list(got) == list(ref)
    for key, tensor in ref.items():
        tensor = tensor.detach()
        expected = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        assert got[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(got[key], expected, err_msg=key)
    # a bare state dict, sharing one storage between two entries
    shared = torch.arange(10, dtype=torch.float32)
    torch.save({"a": shared[:5], "b": shared[5:]}, tmp_path / "bare.pth",
               _use_new_zipfile_serialization=zip_format)  # fmt: skip
    bare = read_pth(tmp_path / "bare.pth")
    np.testing.assert_array_equal(bare["b"], np.arange(5, 10, dtype=np.float32))


def _zip_with_pickle(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")


class _Evil:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return (self.call, (self.arg,))


@pytest.mark.parametrize("call", [os.system, exec, eval], ids=["os.system", "exec", "eval"])
def test_foreign_pickle_global_is_refused_and_never_runs(tmp_path, call):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('x')"
    arg = f"touch {marker}" if call is os.system else code
    payload = pickle.dumps({"weight": _Evil(call, arg)}, protocol=2)
    path = tmp_path / "evil.pth"
    _zip_with_pickle(path, payload)
    with pytest.raises(UnsafePickleError, match=r"refusing to load.*names the global"):
        read_pth(path)
    legacy = tmp_path / "evil_legacy.pth"  # the legacy format's header pickles too
    legacy.write_bytes(pickle.dumps(_Evil(call, arg), protocol=2))
    with pytest.raises(UnsafePickleError):
        read_pth(legacy)
    assert not marker.exists()


def test_numpy_reconstructor_is_refused(tmp_path):
    path = tmp_path / "np.pth"
    _zip_with_pickle(path, pickle.dumps({"w": np.ones(3)}, protocol=2))
    with pytest.raises(UnsafePickleError, match="numpy"):
        read_pth(path)


def test_truncated_and_foreign_files_name_the_file(tmp_path):
    torch = _torch()
    path = tmp_path / "ok.pth"
    torch.save({"w": torch.ones(1000)}, path)
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pth"):
        read_pth(tmp_path / "cut.pth")
    torch.save({"w": torch.ones(1000)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    old = (tmp_path / "old.pth").read_bytes()
    (tmp_path / "old_cut.pth").write_bytes(old[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt|truncated"):
        read_pth(tmp_path / "old_cut.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint|corrupt"):
        read_pth(tmp_path / "text.pth")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "x")
    (tmp_path / "zip.pth").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="data.pkl"):
        read_pth(tmp_path / "zip.pth")
    with pytest.raises(FileNotFoundError):
        read_pth(tmp_path / "missing.pth")


@pytest.mark.multiprocess
def test_port_checkpoint_loads_into_a_model_with_torch_blocked(tmp_path):
    """A .pth with the PyTorch port's module names loads with `import torch` impossible, and
    equals the caffemodel layers it was made from, tensor by tensor."""
    torch = _torch()
    from tests._caffe_reference import caffe_layers
    from tests.test_convert import _port_state_dict

    layers = caffe_layers("resnet50-aspp-l", seed=7)
    sd = _port_state_dict(layers, 50)
    path = tmp_path / "port.pth"
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path)
    np.save(tmp_path / "kernel.npy", {x.name: x for x in layers}["res4a_branch2b"].blobs[0])
    script = f"""
import sys
sys.modules["torch"] = None  # `import torch` raises ImportError
import numpy as np
from deeplab_tf import DeepLabV2
from deeplab_tf.convert import load_weights
model = load_weights(DeepLabV2(backbone="resnet50", head="aspp_l"), {str(path)!r})
expected = np.load({str(tmp_path / "kernel.npy")!r}).transpose(2, 3, 1, 0)
np.testing.assert_array_equal(model.get_layer("res4a_branch2b").kernel.numpy(), expected)
print("loaded without torch")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loaded without torch" in out.stdout
