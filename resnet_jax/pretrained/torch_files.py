"""Reading PyTorch state dicts into numpy, without PyTorch.

Two file formats, as torchvision's weights and users' own checkpoints come:

- `.pth` / `.pt` as `torch.save` writes it (PyTorch >= 1.6): a zip archive holding a
  pickle (`<name>/data.pkl`) whose tensors point at raw storages (`<name>/data/<key>`).
  A restricted unpickler rebuilds each tensor as a numpy array and refuses every other
  global, so reading a file cannot run code from it.
- `.safetensors`, read and written by the `safetensors` package (its numpy API: no
  PyTorch needed).

`read_state_dict(path)` returns {name: numpy array} for either.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy


class StateDictError(ValueError):
    """A file that is not a readable PyTorch state dict; the message names it and says why."""


# torch's storage classes (as pickled: `torch.FloatStorage`, ...) and their dtypes.
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """{name: array} of a `.pth`/`.pt` (torch.save) or `.safetensors` file.

    A checkpoint that wraps the state dict ({'state_dict': ...} or {'model': ...}) is
    unwrapped, and the 'module.' prefix that DataParallel adds is removed.
    """
    if not os.path.isfile(path):
        raise StateDictError(f'{path}: no such file')
    if path.endswith('.safetensors'):
        tensors = _read_safetensors(path)
    elif zipfile.is_zipfile(path):
        tensors = _read_torch_zip(path)
    else:
        raise StateDictError(
            f'{path} is neither a .safetensors file nor a zip-format torch.save file (the '
            'format of PyTorch >= 1.6); re-save it with a current torch.save')
    return _unwrap(path, tensors)


def _unwrap(path: str, obj: Any) -> dict[str, np.ndarray]:
    for key in ('state_dict', 'model'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise StateDictError(f'{path} holds a {type(obj).__name__}, not a state dict')
    arrays = {}
    for name, value in obj.items():
        if not isinstance(value, np.ndarray):
            raise StateDictError(
                f'{path}: entry {name!r} is a {type(value).__name__}, not a tensor')
        arrays[name.removeprefix('module.')] = value
    return arrays


# ---------------------------------------------------------------- safetensors


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        return safetensors.numpy.load_file(path)
    except (safetensors.SafetensorError, OSError, ValueError, TypeError) as error:
        raise StateDictError(f'{path}: not a readable safetensors file ({error})') from error


# ---------------------------------------------------------------- torch.save (zip)


class _Storage:
    """A storage of the archive, read when a tensor is rebuilt from it."""

    def __init__(self, data: bytes, dtype: np.dtype):
        self.array = np.frombuffer(data, np.dtype(dtype).newbyteorder('<'))


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_unused) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 in numpy: a strided view of the storage, copied."""
    itemsize = storage.array.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.array[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride),
        writeable=False)
    return np.array(view, dtype=view.dtype.newbyteorder('='))


def _rebuild_parameter(data: np.ndarray, *_unused) -> np.ndarray:
    return data


class _StorageType:
    """What the pickle names a storage class by (`torch.FloatStorage`): its dtype."""

    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a state dict with tensors as numpy arrays; any other global is refused."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(file)
        self._archive, self._prefix, self._path = archive, prefix, path

    def find_class(self, module: str, name: str):
        if (module, name) == ('collections', 'OrderedDict'):
            return collections.OrderedDict
        if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
            return _rebuild_tensor
        if (module, name) == ('torch._utils', '_rebuild_parameter'):
            return _rebuild_parameter
        if module == 'torch' and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise StateDictError(
            f'{self._path} contains a pickled {module}.{name}, which a state dict of tensors '
            'does not; save model.state_dict() (refusing to run code from the file)')

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != 'storage' or not isinstance(storage_type, _StorageType):
            raise StateDictError(f'{self._path}: unsupported storage {pid[:2]!r}')
        data = self._archive.read(f'{self._prefix}data/{key}')
        return _Storage(data, storage_type.dtype)


def _read_torch_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith('data.pkl')]
        if len(pickles) != 1:
            raise StateDictError(f'{path} is a zip file but not one written by torch.save '
                                 '(no data.pkl)')
        prefix = pickles[0][:-len('data.pkl')]
        byteorder = f'{prefix}byteorder'
        if byteorder in archive.namelist() and archive.read(byteorder) != b'little':
            raise StateDictError(f'{path} was saved on a big-endian machine; not supported')
        with archive.open(pickles[0]) as file:
            try:
                return _RestrictedUnpickler(file, archive, prefix, path).load()
            except StateDictError:
                raise
            except Exception as error:  # noqa: BLE001 - any pickle damage
                raise StateDictError(f'{path}: cannot unpickle ({type(error).__name__}: '
                                     f'{error})') from error


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    """Writes {name: array} as a .safetensors file (the format `read_state_dict` reads)."""
    safetensors.numpy.save_file({name: np.ascontiguousarray(array)
                                 for name, array in tensors.items()}, path)
