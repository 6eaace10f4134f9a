"""The tensors of a ``torch.save`` checkpoint as numpy arrays, read without torch and without trusting the file.

torch writes two formats. The zip format (torch >= 1.6) holds ``<folder>/data.pkl`` and one
record ``<folder>/data/<key>`` per storage, plus an optional ``byteorder``. The legacy format
(``_use_new_zipfile_serialization=False``, and every file before torch 1.6) is a sequence of
pickles: torch's magic number, the protocol version, a sys_info dict, the object, the list of
storage keys; then, for each key in that order, an int64 element count and the storage's raw
little-endian bytes. In both, a tensor is pickled as a call of ``torch._utils._rebuild_tensor_v2``
on a storage (a persistent id naming its key and type), an offset, a size and a stride.

Every pickle is read by an unpickler that knows only the globals a state dict of tensors is made
of and refuses any other by name, as ``torch.load(weights_only=True)`` does: a file cannot run code.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..fileio import allowed_global
from ..weights import WeightsError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
ZIP_HEADER = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"  # torch.save pickles with protocol 2, which opens with PROTO

# torch dtype name -> numpy type of its elements' bytes. bfloat16 is read as its uint16 bit
# patterns and widened to float32 (numpy has no bfloat16).
DTYPES = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.uint16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint64": np.uint64,
    "uint32": np.uint32,
    "uint16": np.uint16,
    "uint8": np.uint8,
    "bool": np.bool_,
}

# The typed storage classes torch pickles a tensor's storage as, and their dtypes.
STORAGE_TYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}

SAVE_WEIGHTS_ONLY = "save the weights with torch.save(model.state_dict(), path)"


@dataclass(frozen=True)
class _TorchDtype:
    """What a storage class (``torch.FloatStorage``) or dtype (``torch.float32``) global stands for."""

    name: str


@dataclass(frozen=True)
class _Storage:
    """A storage as its persistent id describes it: bytes [offset, offset + nbytes) of root storage `key`."""

    key: str
    dtype: _TorchDtype
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _Tensor:
    """A tensor as pickled, checked only when it is read (its storage's bytes may come later in the file).

    `dtype` is None for a typed storage's tensor, whose elements are the storage's; `metadata` holds
    torch's conj/neg view bits, which this reader refuses rather than applies.
    """

    storage: Any
    offset: Any
    size: Any
    stride: Any
    dtype: Any = None
    metadata: Any = None


def _rebuild_tensor(storage, storage_offset, size, stride) -> _Tensor:
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _Tensor(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    return _Tensor(storage, storage_offset, size, stride, dtype, metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch.storage.UntypedStorage": _TorchDtype("uint8"),
    # A storage saved from a GPU is pickled as torch.cuda.FloatStorage; it is read onto the CPU.
    **{
        f"{module}.{cls}": _TorchDtype(dtype)
        for module in ("torch", "torch.cuda")
        for cls, dtype in STORAGE_TYPES.items()
    },
    **{f"torch.{dtype}": _TorchDtype(dtype) for dtype in DTYPES},
}


def load_torch_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict in a ``torch.save`` file (zip or legacy format) as {name: numpy array}.

    A ``{"state_dict": ...}`` or ``{"model": ...}`` training checkpoint is unwrapped and
    "module." (DataParallel) prefixes are removed. Arrays keep torch's dtype, except bfloat16,
    which becomes float32. Raises WeightsError naming the file for a damaged file, for any
    global other than those of tensors (a pickled nn.Module, or code) and for entries that are
    not tensors.
    """
    path = Path(path)
    try:
        file = path.open("rb")
    except OSError as e:
        raise WeightsError(f"{path}: cannot open torch checkpoint ({e.strerror})") from e
    with file:
        try:
            return _read(file, path)
        except WeightsError:
            raise
        except Exception as e:  # unpickling and unzipping damaged bytes raise many kinds of error
            raise WeightsError(
                f"{path}: cannot read torch checkpoint ({type(e).__name__}: {e}); it is truncated or corrupt"
            ) from e


def _read(file: BinaryIO, path: Path) -> dict[str, np.ndarray]:
    size = os.fstat(file.fileno()).st_size
    head = file.read(len(ZIP_HEADER))
    file.seek(0)
    if not head:
        raise WeightsError(f"{path}: empty file, expected a torch checkpoint")
    if head.startswith(ZIP_HEADER):
        obj, read_storages, byteorder = _open_zip(file, path, size)
    elif head.startswith(PICKLE_PROTO):
        obj, read_storages, byteorder = _open_legacy(file, path, size)
    else:
        raise WeightsError(
            f"{path}: starts with {head!r}, neither a zip archive nor a pickle; "
            "not a torch checkpoint, or it is truncated or corrupt"
        )
    state = _state_dict(obj, path)
    keys = {tensor.storage.key for tensor in state.values() if isinstance(tensor.storage, _Storage)}
    buffers = read_storages(keys)
    return {
        name.removeprefix("module."): _to_array(tensor, buffers, byteorder, f"{path}: tensor {name!r}")
        for name, tensor in state.items()
    }


class _Unpickler(pickle.Unpickler):
    """Unpickles the globals of tensors and storages only; refuses every other global by name."""

    def __init__(self, file: BinaryIO, path: Path, file_size: int):
        super().__init__(file, encoding="utf-8")
        self.path = path
        self.file_size = file_size
        self.roots: dict[str, _Storage] = {}
        self.views: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualified, found = allowed_global(module, name, GLOBALS)
        if found is not None:
            return found
        raise WeightsError(
            f"{self.path}: refuses to unpickle the global {qualified}: the file holds pickled Python "
            f"objects (e.g. a whole nn.Module, or code), and tmrjax reads only tensors; {SAVE_WEIGHTS_ONLY}"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        """The storage a persistent id names: ('storage', type, root_key, location, numel[, view])."""
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or _ascii(pid[0]) != "storage":
            raise WeightsError(
                f"{self.path}: persistent id {repr(pid)[:200]} is not a torch storage; the file is corrupt"
            )
        dtype, key, numel = pid[1], _ascii(pid[2]), pid[4]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(dtype, _TorchDtype) or not isinstance(key, str) or not _is_count(numel):
            raise WeightsError(f"{self.path}: malformed storage id {repr(pid)[:200]}; the file is corrupt")
        itemsize = np.dtype(DTYPES[dtype.name]).itemsize
        nbytes = numel * itemsize
        if nbytes > self.file_size:
            raise WeightsError(
                f"{self.path}: storage {key!r} claims {numel} elements ({nbytes} bytes), more than "
                f"the whole file holds ({self.file_size} bytes); it is corrupt"
            )
        root = self.roots.setdefault(key, _Storage(key, dtype, 0, nbytes))  # the first description counts
        if view is None:
            return root
        # A view into a root storage: written only by torch < 1.0.
        if not (isinstance(view, tuple) and len(view) == 3 and _is_count(view[1]) and _is_count(view[2])):
            raise WeightsError(f"{self.path}: malformed storage view {repr(view)[:200]}; the file is corrupt")
        view_key = _ascii(view[0])
        return self.views.setdefault(view_key, _Storage(key, dtype, view[1] * itemsize, view[2] * itemsize))


def _open_zip(
    file: BinaryIO, path: Path, size: int
) -> tuple[Any, Callable[[set[str]], dict[str, bytes]], str]:
    """The object in a zip-format checkpoint, a reader of its storages' bytes, and their byte order."""
    archive = zipfile.ZipFile(file)
    names = set(archive.namelist())
    pickles = sorted(n for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
    if len(pickles) != 1:
        found = "no <folder>/data.pkl" if not pickles else f"several data.pkl ({', '.join(pickles)})"
        raise WeightsError(f"{path}: a zip archive with {found}; not a torch.save checkpoint")
    folder = pickles[0].removesuffix("data.pkl")
    byteorder = "little"
    if folder + "byteorder" in names:
        byteorder = _record(archive, folder + "byteorder", path, size).decode("ascii", "replace")
        if byteorder not in ("little", "big"):
            raise WeightsError(f"{path}: byteorder record says {byteorder!r}, expected 'little' or 'big'")
    unpickler = _Unpickler(io.BytesIO(_record(archive, pickles[0], path, size)), path, size)
    obj = unpickler.load()

    def read_storages(keys: set[str]) -> dict[str, bytes]:
        buffers = {}
        for key in sorted(keys):
            name = f"{folder}data/{key}"
            if name not in names:
                raise WeightsError(f"{path}: no record {name} for storage {key!r}; it is truncated or corrupt")
            expected = unpickler.roots[key].nbytes
            buffers[key] = _record(archive, name, path, size)
            if len(buffers[key]) != expected:
                raise WeightsError(
                    f"{path}: record {name} holds {len(buffers[key])} bytes, but its storage claims "
                    f"{expected}; it is corrupt"
                )
        return buffers

    return obj, read_storages, byteorder


def _record(archive: zipfile.ZipFile, name: str, path: Path, size: int) -> bytes:
    declared = archive.getinfo(name).file_size
    if declared > size:
        raise WeightsError(
            f"{path}: record {name} claims {declared} bytes, more than the whole file holds ({size}); it is corrupt"
        )
    return archive.read(name)


def _open_legacy(
    file: BinaryIO, path: Path, size: int
) -> tuple[Any, Callable[[set[str]], dict[str, bytes]], str]:
    """The object in a legacy-format checkpoint, a reader of its storages' bytes, and their byte order."""
    magic = _Unpickler(file, path, size).load()
    if magic != MAGIC_NUMBER:
        raise WeightsError(f"{path}: a pickle without torch's magic number; not a torch checkpoint")
    protocol = _Unpickler(file, path, size).load()
    if protocol != PROTOCOL_VERSION:
        raise WeightsError(f"{path}: legacy torch protocol version {protocol!r}, expected {PROTOCOL_VERSION}")
    _Unpickler(file, path, size).load()  # sys_info (C type sizes, endianness): storages are always little-endian
    unpickler = _Unpickler(file, path, size)
    obj = unpickler.load()
    keys = _Unpickler(file, path, size).load()
    if not isinstance(keys, list) or not all(isinstance(k, str) and k in unpickler.roots for k in keys):
        raise WeightsError(f"{path}: the list of storage keys does not match the pickled storages; it is corrupt")

    def read_storages(wanted: set[str]) -> dict[str, bytes]:
        buffers = {}
        for key in keys:
            root = unpickler.roots[key]
            itemsize = np.dtype(DTYPES[root.dtype.name]).itemsize
            header = file.read(8)
            if len(header) != 8:
                raise WeightsError(f"{path}: ends before storage {key!r}; it is truncated")
            (numel,) = struct.unpack("<q", header)
            if numel * itemsize != root.nbytes:
                raise WeightsError(
                    f"{path}: storage {key!r} is stored with {numel} elements, but pickled with "
                    f"{root.nbytes // itemsize}; it is corrupt"
                )
            left = size - file.tell()
            if root.nbytes > left:
                raise WeightsError(
                    f"{path}: storage {key!r} claims {root.nbytes} bytes, but only {left} remain; it is truncated"
                )
            if key in wanted:
                buffers[key] = file.read(root.nbytes)
            else:
                file.seek(root.nbytes, os.SEEK_CUR)
        absent = sorted(wanted - buffers.keys())
        if absent:
            raise WeightsError(f"{path}: storages {absent[:10]} are pickled but not stored; it is corrupt")
        return buffers

    return obj, read_storages, "little"


def _state_dict(obj: Any, path: Path) -> dict[str, _Tensor]:
    """The {name: tensor} dict in `obj`, unwrapped from a training checkpoint's "state_dict"/"model"."""
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, expected a state dict (name -> tensor)")
    not_names = sorted(repr(k) for k in obj if not isinstance(k, str))
    if not_names:
        raise WeightsError(f"{path}: keys {not_names[:10]} are not names; expected a state dict (name -> tensor)")
    not_tensors = sorted(k for k, v in obj.items() if not isinstance(v, _Tensor))
    if not_tensors:
        raise WeightsError(
            f"{path}: entries {not_tensors[:10]} are not tensors; expected a state dict "
            f"(torch.save(model.state_dict(), path))"
        )
    return obj


def _to_array(tensor: _Tensor, buffers: dict[str, bytes], byteorder: str, where: str) -> np.ndarray:
    """Copy `tensor`'s elements out of its storage's bytes, after checking that they lie inside it."""
    storage = tensor.storage
    if not isinstance(storage, _Storage):
        raise WeightsError(f"{where}: built on a {type(storage).__name__}, not a storage; the file is corrupt")
    if tensor.metadata:
        raise WeightsError(
            f"{where}: saved as a view with torch's bits {tensor.metadata!r}, which tmrjax does not apply; "
            "save t.resolve_conj().resolve_neg() instead"
        )
    dtype = storage.dtype if tensor.dtype is None else tensor.dtype
    size, stride, offset = tensor.size, tensor.stride, tensor.offset
    if not (
        isinstance(dtype, _TorchDtype)
        and _is_count(offset)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride)
        and all(_is_count(n) for n in size + stride)
    ):
        raise WeightsError(
            f"{where}: malformed layout (dtype {dtype!r}, offset {offset!r}, size {size!r}, stride {stride!r}); "
            "the file is corrupt"
        )
    element = np.dtype(DTYPES[dtype.name]).newbyteorder("<" if byteorder == "little" else ">")
    data = memoryview(buffers[storage.key])[storage.offset : storage.offset + storage.nbytes]
    if len(data) != storage.nbytes or len(data) % element.itemsize:
        raise WeightsError(
            f"{where}: its storage view of {storage.nbytes} bytes does not fit its root storage's "
            f"{len(buffers[storage.key])} bytes of {dtype.name}; the file is corrupt"
        )
    available = len(data) // element.itemsize
    count = math.prod(size)
    if count:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= available:
            raise WeightsError(
                f"{where}: offset {offset}, size {size} and stride {stride} reach element {last}, past the "
                f"{available} elements of its storage; the file is corrupt"
            )
        if count > available:  # copying an expanded (stride 0) view could take any amount of memory
            raise WeightsError(
                f"{where}: {count} elements repeated from a storage of {available} (an expanded view), "
                "which tmrjax does not copy; save t.contiguous() instead"
            )
    elements = np.frombuffer(data, dtype=element)[offset:]
    view = as_strided(elements, shape=size, strides=[s * element.itemsize for s in stride], writeable=False)
    array = np.array(view, dtype=element.newbyteorder("="), order="C")
    if dtype.name == "bfloat16":  # the top half of a float32
        bits = array.astype(np.uint32)
        bits <<= 16
        array = bits.view(np.float32)
    return array


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _ascii(value: Any) -> Any:
    """A name pickled by Python 2 arrives as bytes."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value
