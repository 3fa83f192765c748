"""Reading pickled weight files without running code from them.

A pickle can name any importable callable and call it while it is read (``os.system``, a
module's ``__reduce__`` payload). Weight files need none of that: Detectron2's model-zoo
``.pkl`` files hold dicts of numpy arrays, ``.pth`` files tensors and numbers. So the
unpicklers here build only those types and refuse any other by name
(:class:`RefusedGlobal`); :mod:`.weights` turns that into an error naming the file and the
opt-in for trusted files.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import contextlib
import importlib
import pickle
import re
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import torch

__all__ = ["RefusedGlobal", "describe_error", "load_pickle", "refused_by_torch",
           "torch_load_weights_only"]

# The numpy callables that rebuild arrays, dtypes and scalars, by the module numpy's own
# pickles name them under (numpy 1: numpy.core.*, numpy 2: numpy._core.*).
_NUMPY_FUNCTIONS = {
    ("multiarray", "_reconstruct"),  # ndarray.__reduce__ (protocols 0-4)
    ("multiarray", "scalar"),  # numpy scalars (np.float32(1.0), ...)
    ("numeric", "_frombuffer"),  # ndarray.__reduce_ex__ for protocol 5
}
_BUILTINS = {"set", "frozenset", "bytearray", "list", "dict", "tuple"}  # containers only


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle asked for ``name`` (``module.qualname``), which weight files never need."""

    def __init__(self, name: str):
        super().__init__(f"refused to build {name}")
        self.name = name


def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (the raw data of numpy
    arrays), and nothing else."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise RefusedGlobal(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _plain_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` for the pickle's dtypes, without object ones (weights never hold
    Python objects in arrays)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise RefusedGlobal(f"numpy.dtype({dtype}) (an array of Python objects)")
    return dtype


def _numpy_object(module: str, name: str) -> Any | None:
    """The numpy object a model-zoo pickle may name, or None for anything else."""
    if module == "numpy" and name == "ndarray":
        return np.ndarray
    if module == "numpy" and name == "dtype":
        return _plain_dtype
    for prefix in ("numpy.core.", "numpy._core."):
        if module.startswith(prefix) and (module[len(prefix):], name) in _NUMPY_FUNCTIONS:
            try:  # the spelling of the other numpy major version may not be importable
                return getattr(importlib.import_module(module), name)
            except ImportError:
                other = "numpy._core." if prefix == "numpy.core." else "numpy.core."
                return getattr(importlib.import_module(other + module[len(prefix):]), name)
    return None


class _WeightsUnpickler(pickle.Unpickler):
    """Builds containers, numbers, strings, numpy arrays/dtypes/scalars and OrderedDicts."""

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 pickles (Caffe2/Detectron1 files) name __builtin__, copy_reg, ...
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module == "builtins" and name in _BUILTINS:
            return getattr(__import__("builtins"), name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        found = _numpy_object(module, name)
        if found is None:
            raise RefusedGlobal(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal(f"persistent id {str(pid)[:60]!r}")


def load_pickle(f: IO[bytes], *, encoding: str = "latin1") -> Any:
    """``pickle.load`` that builds only what model-zoo weight files hold; anything else raises
    :class:`RefusedGlobal` before it is called. ``latin1`` reads Python 2 pickles' arrays."""
    return _WeightsUnpickler(f, encoding=encoding).load()


def _numpy_safe_globals() -> list[Any]:
    """numpy arrays, scalars and plain dtypes for torch's weights-only unpickler (some
    ``.pth`` files hold numpy arrays, e.g. state dicts converted from model-zoo pickles)."""
    core = np.core.multiarray
    found: list[Any] = [np.ndarray, np.dtype, core._reconstruct, core.scalar]
    for func in ("_reconstruct", "scalar"):  # the numpy 2 spelling, for files it wrote
        found.append((getattr(core, func), f"numpy._core.multiarray.{func}"))
    # Numeric, bool, bytes and str dtypes; not object or structured ones.
    found += sorted({type(np.dtype(code)) for code in "?bhilqpBHILQPefdgFDGSU"}, key=str)
    return found


@contextlib.contextmanager
def _allow_numpy() -> Iterator[None]:
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        yield


def torch_load_weights_only(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU that also reads plain numpy arrays."""
    with _allow_numpy():
        return torch.load(path, map_location="cpu", weights_only=True)


_TORCH_REFUSALS = (
    re.compile(r"GLOBAL ([\w.<>]+)"),  # "Unsupported global: GLOBAL os.system", "... blocked"
    re.compile(r"got <class '([\w.<>]+)'>"),  # "Can only build Tensor, ..., but got <class X>"
)


def _torch_detail(text: str) -> str:
    """torch's weights-only error without its boilerplate."""
    detail = text.split("WeightsUnpickler error:", 1)[-1]
    return " ".join(detail.split("Check the documentation of torch.load")[0].split())


def refused_by_torch(exc: BaseException) -> str | None:
    """The type a weights-only ``torch.load`` refused (``module.name``), read from its error,
    or None when ``exc`` is no such refusal (another error, or a damaged file)."""
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    for pattern in _TORCH_REFUSALS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def describe_error(exc: BaseException) -> str:
    """``exc`` in a few words (torch's weights-only errors without their boilerplate)."""
    text = str(exc)
    if "Weights only load failed" in text:
        text = _torch_detail(text)
    return f"{type(exc).__name__}: {text[:300]}"
