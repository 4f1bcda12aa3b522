"""Reading weight files without running anything in them: the one reader behind every entry point.

`load(path)` reads the three kinds of file PyTorch writes, none through `torch.load` or `torch.jit.load`:

- `torch.save` zip archives (`ila` checkpoints, the authors' release containers, state dicts),
- legacy `torch.save` files (PyTorch < 1.6, a sequence of pickles followed by raw storages),
- TorchScript archives (OpenAI's CLIP `.pt` files): `data.pkl` is read; the TorchScript classes it names
  (`__torch__.*`) become inert `ScriptObject` stand-ins holding their attributes, and `script_state_dict`
  flattens the parameters and buffers into the dotted names `state_dict()` of the loaded module would give
  (a module with its own `__setstate__` keeps the raw value its `__getstate__` saved: interpreting it would mean
  running its code, so its tensors are not part of the result).
  `code/` is never compiled or run: only its `__parameters__`/`__buffers__` name lists are read as text (to
  tell parameters and buffers from other tensor attributes), and `constants.pkl` is ignored.

Pickles are read by a restricted unpickler that knows a short list of globals (tensor rebuilders, storage types,
dtypes, `OrderedDict`, `set`, numpy scalars, yacs' `CfgNode` as a plain dict); anything else is refused, so no
pickled callable is ever called. Sizes are checked before memory is taken: only uncompressed zip records are
read (torch never compresses the records it reads back), every record must lie inside the file, a storage may
not declare more bytes than its record holds, and all storages together may not exceed the file's size; a
tensor may not reach outside its storage. Every failure is a one-line `UserError`.

Reading is bounded by the pickle's size (`_Unpickler`), so any file is read in time and memory proportional to it:
the values built (counted in cells: one per item a container or call copies) may not exceed
`_CELLS_PER_BYTE` per pickle byte (plus a floor); what a value unfolds to when shared references are followed
(the "billion laughs" of pickles: a memo entry fetched again and again, each level doubling the last) may not
exceed `_WEIGHT_PER_BYTE` per byte (plus a floor), so whoever walks the result (validation, `repr`, `json`, a
comparison) does bounded work; containers nest at most `_MAX_DEPTH` deep; a container may not change once
placed inside another (only data holding itself does that). Containers built from the file are never hashed:
dict keys and set items may only be strings, bytes, numbers of at most 64 bits, None and short flat tuples of
those (tuples whose hashes were crafted to collide are refused), so inserting a key costs at most its length.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import re
import struct
import threading
import zipfile
import zlib
from typing import Any, BinaryIO

import numpy as np
import torch

from ila.errors import UserError, one_line, printable

__all__ = ["FileRefused", "FileUnreadable", "ScriptObject", "held_bytes", "load",
           "script_state_dict"]


class FileUnreadable(UserError):
    """The file is not a PyTorch file this reader understands (malformed, truncated, another format)."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, one_line(reason)
        super().__init__(f"cannot read {path}: {self.reason}")


class FileRefused(FileUnreadable):
    """The file asks for something this reader never does (run code, build arbitrary objects, over-allocate)."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)
        self.args = (f"refusing to load {path}: {self.reason}",)


class _Refuse(Exception):
    """Raised inside the reader; becomes FileRefused with the path."""


class _Malformed(Exception):
    """Raised inside the reader; becomes FileUnreadable with the path."""


# ------------------------------------------------------------------ what a pickle may name

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}
_DTYPES = {name: getattr(torch, name) for name in (
    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "complex64", "complex128", "float", "double", "half", "long", "int", "short")}
_MAX_DIMS = 64
_MAX_NESTING = 256
# reading budgets (see the module docstring); a real checkpoint uses a small fraction of each (tests/test_safe_load)
_CELLS_PER_BYTE, _CELLS_FLOOR = 16, 1 << 20         # values built: cells per pickle byte, plus a floor
_WEIGHT_PER_BYTE, _WEIGHT_FLOOR = 64, 1 << 18       # what any value unfolds to through shared references
_MAX_DEPTH = 100                                    # container nesting (ila's deepest: a TorchScript module, ~20)
_MAX_KEY_TUPLE = 16                                 # items of a tuple used as a dict key / set item
_MAX_SAME_HASH = 8                                  # distinct tuple keys sharing one hash (a hash-flooding file)
_MAX_CODE_BYTES = 16 << 20      # code/ text read for parameter/buffer names (all files together)
_VIEW_ALLOWANCE = 64 << 20      # bytes overlapping views (e.g. expanded tensors) may add beyond the file's size
_LOCAL = threading.local()


class _StorageType:
    """What `torch.FloatStorage` etc. resolve to: only a dtype; calling it is not possible."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, *args, **kwargs):
        raise _Refuse("it calls a storage constructor, which allocates whatever it is asked")


class _Storage:
    """A storage read from the file: raw bytes (uint8 tensor) and the element type it was saved with."""

    __slots__ = ("data", "dtype")

    def __init__(self, data: torch.Tensor, dtype: torch.dtype):
        self.data, self.dtype = data, dtype


def _check_ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > _MAX_DIMS:
        raise _Refuse(f"tensor {what} is not a short tuple of integers")
    out = tuple(value)
    if not all(type(v) is int for v in out):
        raise _Refuse(f"tensor {what} is not a tuple of integers")
    return out


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored, dtype: torch.dtype | None = None):
    """A view of a storage read from the file, checked to lie inside it (torch's `_rebuild_tensor_v2`)."""
    if not isinstance(storage, _Storage):
        raise _Refuse("a tensor is built from something that is not a storage of this file")
    size, stride = _check_ints(size, "size"), _check_ints(stride, "stride")
    if type(storage_offset) is not int or storage_offset < 0 or len(size) != len(stride) \
            or any(v < 0 for v in size + stride):
        raise _Refuse("a tensor has a negative or malformed offset, size or stride")
    dtype = dtype or storage.dtype
    item = torch.empty((), dtype=dtype).element_size()
    numel_in_storage = storage.data.numel() // item
    if 0 not in size:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= numel_in_storage:
            raise _Refuse(f"a tensor of size {list(size)} reaches outside its storage of {numel_in_storage} elements")
    numel = 1
    for n in size:
        numel *= n
    if numel > numel_in_storage:     # an overlapping view (stride 0, ...): bounded, or it could be materialized
        _LOCAL.views_left -= (numel - numel_in_storage) * item
        if _LOCAL.views_left < 0:
            raise _Refuse(f"a tensor of {numel} elements over a storage of {numel_in_storage} (an overlapping "
                          f"view) would make the file's tensors far larger than the file")
    t = torch.empty((0,), dtype=dtype, device=storage.data.device)
    return t.set_(storage.data.untyped_storage(), storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    if not isinstance(dtype, torch.dtype):
        raise _Refuse("a tensor's dtype is not a torch dtype")
    return _rebuild_tensor(storage, storage_offset, size, stride, dtype=dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Parameters come back as plain tensors (hooks and Python state are dropped)."""
    if not torch.is_tensor(data):
        raise _Refuse("a parameter's data is not a tensor")
    return data


class _TensorType:
    """What `torch.Tensor` / `Parameter` resolve to: a name for `_rebuild_from_type_v2`, not a constructor (calling
    `torch.Tensor(n)` would allocate whatever the pickle asks)."""


    def __call__(self, *args, **kwargs):
        raise _Refuse("it calls torch.Tensor(...), which allocates whatever it is asked")


_TENSOR_TYPE = _TensorType()


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter) or not isinstance(args, tuple):
        raise _Refuse("a tensor subclass is rebuilt through an unknown function")
    return func(*args)   # the subclass and its Python state are dropped: a plain tensor


def _same(value, *_ignored):
    return value


def _as_list(value):
    if not isinstance(value, (list, tuple)):
        raise _Refuse("a TorchScript list is not a list")
    return list(value)


_NP_KINDS = set("biufc")


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NP_KINDS or dtype.fields is not None:
        raise _Refuse(f"numpy scalar of dtype {dtype if isinstance(dtype, np.dtype) else _describe(dtype)}: only "
                      f"numbers are read")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _Refuse("a numpy scalar's bytes do not fit its dtype")
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str) or len(spec) > 8:
        raise _Refuse(f"numpy dtype {_describe(spec)}: only simple number types are read")
    try:
        dtype = np.dtype(spec)
    except TypeError as e:
        raise _Refuse(f"numpy dtype {spec!r}: {e}") from None
    if dtype.kind not in _NP_KINDS:
        raise _Refuse(f"numpy dtype {spec!r}: only numbers are read")
    return dtype


class _ConfigNode(dict):
    """Stands in for yacs' `CfgNode` (a dict subclass): its items are kept, its attributes dropped."""

    def __setstate__(self, state):
        pass


class _Device(str):
    """`torch.device(...)` in a pickle: kept as its string, every tensor is read to the CPU anyway."""

    def __new__(cls, *args):
        if not args or not all(isinstance(a, (str, int)) for a in args):
            raise _Refuse("a torch.device with odd arguments")
        return str.__new__(cls, ":".join(str(a) for a in args))


_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set, "__builtin__.set": set, "builtins.frozenset": frozenset,
    "__builtin__.frozenset": frozenset, "builtins.complex": complex, "__builtin__.complex": complex,
    "builtins.slice": slice, "__builtin__.slice": slice,
    "torch.Size": torch.Size, "torch.device": _Device,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch._tensor.Tensor": _TENSOR_TYPE, "torch.Tensor": _TENSOR_TYPE, "torch.nn.parameter.Parameter": _TENSOR_TYPE,
    "torch.jit._pickle.restore_type_tag": _same,
    "torch.jit._pickle.build_intlist": _as_list, "torch.jit._pickle.build_doublelist": _as_list,
    "torch.jit._pickle.build_boollist": _as_list, "torch.jit._pickle.build_tensorlist": _as_list,
    "numpy.core.multiarray.scalar": _numpy_scalar, "numpy._core.multiarray.scalar": _numpy_scalar,
    "numpy.dtype": _numpy_dtype,
    "yacs.config.CfgNode": _ConfigNode,
}


# ------------------------------------------------------------------ TorchScript stand-ins

class ScriptObject:
    """An inert stand-in for an instance of a TorchScript class (`__torch__.*`) read from an archive.

    `attributes` holds what the archive stored for it (tensors, numbers, nested `ScriptObject`s), or `state`
    what its `__getstate__` returned; no method of the original class exists here. `parameters`/`buffers` are
    the names the archive's code declares (None when it declares none).
    """

    qualified_name = ""
    parameters: tuple[str, ...] | None = None
    buffers: tuple[str, ...] | None = None

    def __init__(self):
        self.attributes: dict[str, Any] = {}
        self.state: Any = None

    def __setstate__(self, state):   # pickle's BUILD: store, never interpret
        if isinstance(state, dict) and all(isinstance(k, str) for k in state):
            self.__dict__["attributes"] = dict(state)
        else:
            self.__dict__.setdefault("attributes", {})
            self.__dict__["state"] = state

    @property
    def is_module(self) -> bool:
        return self.parameters is not None or isinstance(self.__dict__.get("attributes", {}).get("training"), bool)

    def __repr__(self) -> str:
        return f"ScriptObject({self.qualified_name})"


def script_state_dict(root: ScriptObject) -> collections.OrderedDict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript module read by `load`, named as its `state_dict()` names
    them (each module: its parameters, its buffers, then its submodules, in the archive's attribute order)."""
    out: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    seen: set[int] = set()

    def walk(obj: ScriptObject, prefix: str, depth: int) -> None:
        if id(obj) in seen:
            return
        if depth > _MAX_NESTING:
            raise UserError("the TorchScript archive nests modules too deeply to be a model")
        seen.add(id(obj))
        attrs = obj.__dict__.get("attributes", {})
        if obj.parameters is None:   # no declaration in the archive: every tensor attribute
            names = [n for n, v in attrs.items() if torch.is_tensor(v)]
        else:
            names = list(obj.parameters) + list(obj.buffers or ())
        for name in names:
            if torch.is_tensor(attrs.get(name)):
                out[prefix + name] = attrs[name]
        for name, value in attrs.items():
            if isinstance(value, ScriptObject) and value.is_module:
                walk(value, f"{prefix}{name}.", depth + 1)

    if not isinstance(root, ScriptObject):
        raise UserError("not a TorchScript module")
    walk(root, "", 0)
    return out


_DECLARATION = re.compile(r"^class (\w+)\([\w.]*\):\n(?:  .*\n)*?  __parameters__ = \[([^\]\n]*)\]\n"
                          r"  __buffers__ = \[([^\]\n]*)\]", re.MULTILINE)


def _declarations(text: str, module: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """`{qualified class name: (parameter names, buffer names)}` from one file of an archive's code/ (as text)."""
    names = lambda s: tuple(re.findall(r'"(\w+)"', s))  # noqa: E731
    return {f"{module}.{m.group(1)}": (names(m.group(2)), names(m.group(3))) for m in _DECLARATION.finditer(text)}


# ------------------------------------------------------------------ the unpickler

_SIZED = frozenset({str, bytes, bytearray, list, tuple, dict, set, frozenset, collections.OrderedDict})
_KEY_ATOMS = frozenset({str, bytes, int, float, bool, type(None)})
_NUMBERS = frozenset({int, float, bool, complex, type(None)})


def _describe(value) -> str:
    """A few words about a value read from a file, without walking it (the repr of a shared structure can take
    longer than the universe has)."""
    kind = type(value)
    if kind in (str, bytes):
        return one_line(repr(value[:40]), 60)
    if kind in (float, bool, type(None)) or (kind is int and value.bit_length() <= 64):
        return repr(value)
    return f"{'an' if kind.__name__[:1].lower() in 'aeiou' else 'a'} {kind.__name__}"


def _key_atom(value) -> bool:
    kind = type(value)
    return kind in _KEY_ATOMS and (kind is not int or value.bit_length() <= 64)


class _Unpickler(pickle._Unpickler):
    """Python's own unpickler (the pure-Python one, whose opcodes can be restricted) with these restrictions:
    `find_class` knows only `_GLOBALS` (and stand-ins for `__torch__` classes), `persistent_load` only the file's
    storages, BUILD (setting an object's state) applies only to the stand-ins, never to a tensor or other object
    whose `__setstate__` is code; and every opcode that builds or fills a container, or calls something, is
    accounted against the budgets of the module docstring.

    Each container built is kept (`_kept`, so that ids are never reused while reading) with, by id, its `_weight`
    (what it unfolds to: 1 + the weights of what it holds, a shared part counted each time it is held) and
    `_depth` (how deep it nests); `_placed` holds the ids of those already inside another container (they may
    not change any more: a weight once added to a parent stays true). Plain dicts of ints and one list, so that
    the garbage collector has nothing more to track than the values themselves.
    """

    class _Opcodes(dict):
        def __missing__(self, code: int):
            raise _Malformed(f"its pickle has an unknown opcode 0x{code:02x}")

    dispatch = _Opcodes(pickle._Unpickler.dispatch)

    def __init__(self, file, storage: callable, nbytes: int, script_classes: dict | None = None,
                 declarations: dict = None):
        super().__init__(file, encoding="utf-8")
        self._storage = storage
        self._script_classes = script_classes
        self._declarations = declarations or {}
        self._nbytes = max(0, int(nbytes))
        self._max_cells = _CELLS_FLOOR + _CELLS_PER_BYTE * self._nbytes
        self._cells = 0
        self._max_weight = _WEIGHT_FLOOR + _WEIGHT_PER_BYTE * self._nbytes
        self._kept: list = []
        self._weight: dict[int, int] = {}
        self._depth: dict[int, int] = {}
        self._placed: set[int] = set()
        self._key_hashes: dict[int, list] = {}

    # ---------------------------------------------------------------- budgets

    def _spend(self, cells: int) -> None:
        self._cells += cells
        if self._cells > self._max_cells:
            raise _Refuse(f"its pickle builds more than {self._max_cells:,} values, more than "
                          f"{self._nbytes:,} bytes of pickle can describe")

    def _contents(self, items, container=None) -> tuple[int, int]:
        """(weight, depth) of `items` put inside a container; the containers among them are marked placed."""
        weights, depths, placed, weight, depth = self._weight, self._depth, self._placed, 0, 0
        for item in items:
            kind = type(item)
            if kind is str or kind is bytes or kind is bytearray:
                weight += 1 + (len(item) >> 6)
            elif kind is int:
                weight += 1 + (item.bit_length() >> 9)
            else:
                key = id(item)
                known = weights.get(key)
                if known is None:
                    weight += 1
                    continue
                if item is container:
                    raise _Refuse("it puts a container inside itself (data holding itself is never a weight file)")
                weight += known
                if depths[key] > depth:
                    depth = depths[key]
                placed.add(key)
        return weight, depth

    def _record(self, obj, weight: int, depth: int):
        if weight > self._max_weight:
            raise _Refuse(f"its values unfold to more than {self._max_weight:,} items through shared references (a "
                          f"part repeated again and again, a 'billion laughs'), far more than {self._nbytes:,} bytes "
                          f"of pickle hold")
        if depth > _MAX_DEPTH:
            raise _Refuse(f"its containers nest more than {_MAX_DEPTH} deep")
        key = id(obj)
        if key not in self._weight:
            self._kept.append(obj)
        self._weight[key], self._depth[key] = weight, depth
        return obj

    def _new(self, obj, items, cells: int):
        """`obj`, just built from `items`, recorded."""
        self._spend(cells)
        if not items:
            return self._record(obj, 1, 1)
        weight, depth = self._contents(items)
        return self._record(obj, 1 + weight, 1 + depth)

    def _grow(self, obj, items) -> None:
        """`items` are about to be put into `obj`, a container built earlier."""
        key = id(obj)
        if key in self._placed:
            raise _Refuse("it changes a container after placing it inside another (only data holding itself does "
                          "that)")
        self._spend(len(items))
        weight, depth = self._contents(items, obj)
        self._record(obj, self._weight.get(key, 1) + weight, max(self._depth.get(key, 1), 1 + depth))

    def _check_key(self, key) -> None:
        """A dict key or set item: hashing it must cost no more than its length, and it may not be crafted to
        collide with the others (inserting n keys of one hash takes n^2 comparisons)."""
        if _key_atom(key):
            return
        if type(key) is tuple and len(key) <= _MAX_KEY_TUPLE and all(_key_atom(v) for v in key):
            seen = self._key_hashes.setdefault(hash(key), [])
            if any(other == key for other in seen):
                return
            if len(seen) >= _MAX_SAME_HASH:
                raise _Refuse("its dict keys were made to share one hash, so that inserting them takes quadratic "
                              "time")
            seen.append(key)
            return
        if isinstance(key, torch.dtype):
            return
        raise _Refuse(f"it uses {_describe(key)} as a dict key or set item; only strings, numbers and short flat "
                      f"tuples of them are read as keys")

    def _check_keys(self, keys) -> None:
        for key in keys:
            self._check_key(key)

    # ---------------------------------------------------------------- containers

    def _load_empty_list(self):
        self.append(self._new([], (), 1))

    def _load_empty_dict(self):
        self.append(self._new({}, (), 1))

    def _load_empty_set(self):
        self.append(self._new(set(), (), 1))

    def _load_list(self):
        items = self.pop_mark()
        self.append(self._new(items, items, len(items)))

    def _load_tuple(self):
        items = self.pop_mark()
        self.append(self._new(tuple(items), items, len(items)))

    def _load_tuple1(self):
        items = self.stack[-1:]
        if not items:
            raise _Malformed("TUPLE1 with no value on the stack")
        self.stack[-1:] = [self._new(tuple(items), items, 1)]

    def _load_tuple2(self):
        items = self.stack[-2:]
        if len(items) != 2:
            raise _Malformed("TUPLE2 with fewer than two values on the stack")
        self.stack[-2:] = [self._new(tuple(items), items, 2)]

    def _load_tuple3(self):
        items = self.stack[-3:]
        if len(items) != 3:
            raise _Malformed("TUPLE3 with fewer than three values on the stack")
        self.stack[-3:] = [self._new(tuple(items), items, 3)]

    def _load_frozenset(self):
        items = self.pop_mark()
        self._check_keys(items)
        self.append(self._new(frozenset(items), items, len(items)))

    def _load_dict(self):
        items = self.pop_mark()
        if len(items) % 2:
            raise _Malformed("a dict of an odd number of keys and values")
        self._check_keys(items[0::2])
        made = self._new({}, items, len(items))
        for i in range(0, len(items), 2):
            made[items[i]] = items[i + 1]
        self.append(made)

    def _append_items(self, items) -> None:
        target = self.stack[-1]
        if not isinstance(target, list):
            raise _Refuse(f"it appends to {_describe(target)}, which only code does")
        self._grow(target, items)
        target.extend(items)

    def _load_append(self):
        value = self.stack.pop()
        self._append_items([value])

    def _load_appends(self):
        self._append_items(self.pop_mark())

    def _set_items(self, items) -> None:
        target = self.stack[-1]
        if not isinstance(target, dict):
            raise _Refuse(f"it sets items of {_describe(target)}, which only code does")
        if len(items) % 2:
            raise _Malformed("SETITEMS with an odd number of keys and values")
        self._check_keys(items[0::2])
        self._grow(target, items)
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items([key, value])

    def _load_setitems(self):
        self._set_items(self.pop_mark())

    def _load_additems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            raise _Refuse(f"it adds set items to {_describe(target)}, which only code does")
        self._check_keys(items)
        self._grow(target, items)
        target.update(items)

    # ---------------------------------------------------------------- calls (of the few globals allowed)

    def _check_constructor(self, func, args: tuple) -> None:
        """The containers a pickle may call with contents hash them: the keys are checked first."""
        if not args:
            return
        arg, kind = args[0], type(args[0])
        if func is set or func is frozenset:
            if kind in (list, tuple):
                self._check_keys(arg)
            elif not (kind in (str, bytes) or isinstance(arg, (set, frozenset, dict))):  # already checked
                raise _Refuse(f"it builds a {func.__name__} from {_describe(arg)}")
        elif not isinstance(arg, dict):
            if kind not in (list, tuple):
                raise _Refuse(f"it builds a dict from {_describe(arg)}")
            for pair in arg:
                if type(pair) not in (list, tuple) or len(pair) != 2:
                    raise _Malformed("a dict built from something other than (key, value) pairs")
                self._check_key(pair[0])

    def _call(self, func, args, kwargs, make):
        """The result of `make()` (calling `func` with `args`, `kwargs`), accounted: the cells it may copy from
        its arguments, and a weight and depth of everything it was given."""
        if type(args) is not tuple or (kwargs is not None and type(kwargs) is not dict):
            raise _Malformed("a call whose arguments are not a tuple")
        parts = list(args) + (list(kwargs.values()) if kwargs else [])
        self._spend(1 + len(parts) + sum(len(p) for p in parts if type(p) in _SIZED))
        if func is set or func is frozenset or func is collections.OrderedDict or func is _ConfigNode:
            self._check_constructor(func, args)
        result = make()
        if type(result) in _NUMBERS or type(result) in (str, bytes):
            return result
        weight, depth = self._contents(parts)
        key = id(result)
        if key in self._weight:                 # an argument given back (restore_type_tag): never smaller
            weight, depth = max(self._weight[key] - 1, weight), max(self._depth[key], depth)
        return self._record(result, 1 + weight, depth)

    def _load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        self.stack[-1] = self._call(func, args, None, lambda: func(*args))

    def _load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, None, lambda: cls.__new__(cls, *args)))

    def _load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, kwargs, lambda: cls.__new__(cls, *args, **kwargs)))

    def _instantiate(self, klass, args):      # INST and OBJ
        args = tuple(args)

        def make():
            if args or not isinstance(klass, type) or hasattr(klass, "__getinitargs__"):
                return klass(*args)
            return klass.__new__(klass)
        self.append(self._call(klass, args, None, make))

    for _code, _name in (("EMPTY_LIST", "_load_empty_list"), ("EMPTY_DICT", "_load_empty_dict"),
                         ("EMPTY_SET", "_load_empty_set"), ("LIST", "_load_list"), ("TUPLE", "_load_tuple"),
                         ("TUPLE1", "_load_tuple1"), ("TUPLE2", "_load_tuple2"), ("TUPLE3", "_load_tuple3"),
                         ("FROZENSET", "_load_frozenset"), ("DICT", "_load_dict"), ("APPEND", "_load_append"),
                         ("APPENDS", "_load_appends"), ("SETITEM", "_load_setitem"), ("SETITEMS", "_load_setitems"),
                         ("ADDITEMS", "_load_additems"), ("REDUCE", "_load_reduce"), ("NEWOBJ", "_load_newobj"),
                         ("NEWOBJ_EX", "_load_newobj_ex")):
        dispatch[getattr(pickle, _code)[0]] = locals()[_name]
    del _code, _name

    # ---------------------------------------------------------------- names, state, storages

    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if full in _GLOBALS:
            return _GLOBALS[full]
        if self._script_classes is not None and (module == "__torch__" or module.startswith("__torch__.")):
            return self._script_class(full)
        raise _Refuse(f"it names {one_line(full, 80)}, which could run code; only tensors and plain containers "
                      f"are read")

    def _script_class(self, full: str) -> type:
        if full not in self._script_classes:
            params, buffers = self._declarations.get(full, (None, None))
            self._script_classes[full] = type(re.sub(r"\W", "_", full)[-100:], (ScriptObject,), {
                "qualified_name": full, "parameters": params, "buffers": buffers})
        return self._script_classes[full]

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, (ScriptObject, _ConfigNode)):
            self._grow(inst, (state,))
            if type(state) is dict:
                self._spend(len(state))           # a stand-in keeps a copy
            inst.__setstate__(state)
        elif type(inst) is collections.OrderedDict and isinstance(state, dict) \
                and all(type(k) is str and not k.startswith("__") for k in state):
            self._grow(inst, (state,))
            inst.__dict__.update(state)           # a state_dict's `_metadata` (module versions)
        elif isinstance(inst, np.dtype):          # numpy's dtype state: only its byte order matters here
            if isinstance(state, tuple) and len(state) > 1 and state[1] == ">":
                raise _Refuse("a big-endian numpy value; only little-endian files are read")
        else:
            raise _Refuse(f"it sets the state of a {type(inst).__name__}, which only code does")

    dispatch[pickle.BUILD[0]] = _load_build

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise _Refuse(f"it refers to an object outside the pickle ({_describe(pid)})")
        return self._storage(pid)


def _unpickle(file, storage, nbytes: int, **kwargs):
    """One pickle from `file`, read within the budgets of a pickle of `nbytes` bytes."""
    try:
        return _Unpickler(file, storage, nbytes, **kwargs).load()
    except (_Refuse, _Malformed, UserError):
        raise
    except RecursionError:
        raise _Malformed("its pickle nests too deeply") from None
    except MemoryError:
        raise _Refuse("its pickle asks for more memory than there is") from None
    except Exception as e:  # noqa: BLE001 - a malformed pickle raises anything (EOFError, TypeError, ...)
        raise _Malformed(f"its pickle is malformed ({type(e).__name__}: {one_line(e, 120)})") from None


def _storage_pid(pid) -> tuple[torch.dtype, str, int]:
    if len(pid) < 5:
        raise _Malformed("a storage reference is malformed")
    stype, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
    if isinstance(stype, torch.dtype):       # newer torch may name the dtype itself
        dtype = stype
    elif isinstance(stype, _StorageType):
        dtype = stype.dtype
    else:
        raise _Refuse("a storage of an unknown type")
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise _Malformed("a storage reference is malformed")
    return dtype, key, numel


# ------------------------------------------------------------------ zip archives

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


class _Archive:
    """The records of a torch zip archive, read with every size checked against the file."""

    def __init__(self, f: BinaryIO, size: int):
        self.f, self.size = f, size
        try:
            zf = zipfile.ZipFile(f)
            infos = zf.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as e:
            why = "its directory at the end is missing" if "not a zip file" in str(e) else one_line(e, 100)
            raise _Malformed(f"a truncated or damaged zip archive ({why})") from None
        self.zf = zf
        self.infos = {i.filename: i for i in infos}
        pkl = sorted((n for n in self.infos if n.endswith("data.pkl") and n.count("/") <= 1), key=len)
        if not pkl:
            if any(n.endswith("model.json") for n in self.infos):
                raise _Malformed("a TorchScript archive of PyTorch < 1.4; re-save it with a current PyTorch")
            raise _Malformed("a zip archive, but not one PyTorch wrote (it has no data.pkl)")
        self.prefix = pkl[0][: -len("data.pkl")]
        self.allocated = 0

    def has(self, name: str) -> bool:
        return self.prefix + name in self.infos

    def _locate(self, name: str) -> tuple[int, zipfile.ZipInfo]:
        info = self.infos.get(self.prefix + name)
        if info is None:
            raise _Malformed(f"the archive has no record {name}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _Refuse(f"record {name} is compressed; PyTorch never compresses the records it reads back")
        if info.file_size != info.compress_size or info.header_offset + _LOCAL_HEADER.size > self.size:
            raise _Refuse(f"record {name} declares {info.file_size} bytes, which do not fit the "
                          f"{self.size}-byte file")
        self.f.seek(info.header_offset)
        header = self.f.read(_LOCAL_HEADER.size)
        fields = _LOCAL_HEADER.unpack(header)
        if fields[0] != b"PK\x03\x04":
            raise _Malformed(f"record {name} has no local header where the directory says")
        start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
        if start + info.file_size > self.size:
            raise _Refuse(f"record {name} declares {info.file_size} bytes, more than the {self.size}-byte file holds")
        return start, info

    def read_into(self, name: str, nbytes_expected: int | None = None) -> torch.Tensor:
        """The record's bytes as a uint8 tensor (allocated only after its size is checked)."""
        start, info = self._locate(name)
        if nbytes_expected is not None and nbytes_expected > info.file_size:
            raise _Refuse(f"storage {name} declares {nbytes_expected} bytes but its record holds {info.file_size}")
        self.allocated += info.file_size
        if self.allocated > self.size:
            raise _Refuse("its storages together declare more bytes than the file holds")
        buf = torch.empty(info.file_size, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        self.f.seek(start)
        got = self.f.readinto(view) if info.file_size else 0
        if got != info.file_size:
            raise _Malformed(f"record {name} is truncated")
        if zlib.crc32(view) != info.CRC:
            raise _Malformed(f"record {name} is corrupt (its checksum does not match)")
        return buf

    def read_small(self, name: str, limit: int) -> bytes:
        info = self.infos.get(self.prefix + name)
        if info is None or info.file_size > limit:
            return b""
        return self.read_into(name).numpy().tobytes()

    def code_declarations(self) -> dict:
        """Parameter/buffer names from code/*.py, read as text (bounded; deflated files decompressed with a cap)."""
        decl, budget = {}, _MAX_CODE_BYTES
        code = self.prefix + "code/"
        for full, info in self.infos.items():
            if not (full.startswith(code) and full.endswith(".py")):
                continue
            if info.file_size > budget or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) \
                    or info.header_offset + info.compress_size > self.size:
                continue        # too large or odd: those classes fall back to "every tensor attribute"
            try:
                with self.zf.open(info) as fh:
                    data = fh.read(info.file_size + 1)
            except Exception:  # noqa: BLE001 - a damaged code file only loses its declarations
                continue
            budget -= len(data)
            if len(data) > info.file_size:
                continue
            module = full[len(code):-3].replace("/", ".")
            decl.update(_declarations(data.decode("utf-8", "replace"), module))
        return decl


def _load_zip(f: BinaryIO, size: int, weights: bool = True):
    archive = _Archive(f, size)
    order = archive.read_small("byteorder", 16)
    if order and order.strip() != b"little":
        raise _Malformed(f"it was written on a {one_line(order.decode('ascii', 'replace'), 10)}-endian machine; "
                         f"only little-endian files are read")
    script = archive.has("constants.pkl") or any(n.startswith(archive.prefix + "code/") for n in archive.infos)
    storages: dict[str, _Storage] = {}

    def storage(pid):
        dtype, key, numel = _storage_pid(pid)
        if key not in storages:
            nbytes = numel * torch.empty((), dtype=dtype).element_size()
            if weights:
                storages[key] = _Storage(archive.read_into(f"data/{key}", nbytes), dtype)
            else:                   # sizes checked, nothing read: tensors on the meta device
                start, info = archive._locate(f"data/{key}")
                if nbytes > info.file_size:
                    raise _Refuse(f"storage data/{key} declares {nbytes} bytes but its record holds {info.file_size}")
                storages[key] = _Storage(torch.empty(info.file_size, dtype=torch.uint8, device="meta"), dtype)
        return storages[key]

    pkl = archive.read_into("data.pkl").numpy().tobytes()
    if script:
        result = _unpickle(io.BytesIO(pkl), storage, len(pkl), script_classes={},
                           declarations=archive.code_declarations())
        if not isinstance(result, ScriptObject):
            raise _Malformed("a TorchScript archive whose data is not a module")
        return result
    return _unpickle(io.BytesIO(pkl), storage, len(pkl))


# ------------------------------------------------------------------ legacy files

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _Bounded:
    """A file whose reads never ask for more than is left in it (a pickle opcode may declare any length)."""

    def __init__(self, f: BinaryIO, size: int):
        self.f, self.size = f, size

    def _left(self, n: int) -> int:
        left = max(0, self.size - self.f.tell())
        return left if n is None or n < 0 else min(n, left)

    def read(self, n: int = -1) -> bytes:
        return self.f.read(self._left(n))

    def readline(self, n: int = -1) -> bytes:
        return self.f.readline(self._left(n))

    def readinto(self, buf) -> int:
        view = memoryview(buf)
        return self.f.readinto(view[: self._left(len(view))])

    def peek(self, n: int = 1) -> bytes:
        return self.f.peek(n)[: self._left(n)]


def _load_legacy(f: BinaryIO, size: int, weights: bool = True):
    f = _Bounded(f, size)

    def no_storage(pid):
        raise _Malformed("a storage reference before the file's header")

    try:
        magic = _unpickle(f, no_storage, size)
    except _Malformed:
        magic = None
    if magic != _LEGACY_MAGIC:
        raise _Malformed("not a PyTorch file (neither a zip archive nor a legacy torch.save file)")
    if _unpickle(f, no_storage, size) != _LEGACY_PROTOCOL:
        raise _Malformed("a legacy torch.save file of an unknown protocol version")
    info = _unpickle(f, no_storage, size)
    if not isinstance(info, dict) or not info.get("little_endian", True):
        raise _Malformed("a legacy file written on a big-endian machine; only little-endian files are read")

    storages: dict[str, _Storage] = {}
    declared = [0]

    def storage(pid):
        dtype, key, numel = _storage_pid(pid)
        if len(pid) > 5 and pid[5] is not None:
            raise _Malformed("a legacy storage view; re-save the file with a current PyTorch")
        if key not in storages:
            nbytes = numel * torch.empty((), dtype=dtype).element_size()
            declared[0] += nbytes
            if declared[0] > size:
                raise _Refuse(f"its storages declare {declared[0]} bytes, more than the {size}-byte file holds")
            storages[key] = _Storage(torch.empty(nbytes, dtype=torch.uint8, device=None if weights else "meta"),
                                     dtype)
        return storages[key]

    result = _unpickle(f, storage, size)
    if not weights:
        return result
    keys = _unpickle(f, no_storage, size)
    if not isinstance(keys, list) or not all(type(k) is str for k in keys) or set(keys) != set(storages) \
            or len(keys) != len(storages):
        raise _Malformed("its list of storages does not match the storages its data uses")
    for key in keys:
        st = storages[key]
        head = f.read(8)
        if len(head) != 8:
            raise _Malformed("it is truncated")
        numel = struct.unpack("<q", head)[0]
        item = torch.empty((), dtype=st.dtype).element_size()
        if numel * item != st.data.numel():
            raise _Malformed(f"storage {key} holds {numel} elements but was declared with {st.data.numel() // item}")
        if st.data.numel() and f.readinto(memoryview(st.data.numpy())) != st.data.numel():
            raise _Malformed("it is truncated")
    return result


# ------------------------------------------------------------------ the entry point

def load(path: str | os.PathLike, weights: bool = True) -> Any:
    """The object a PyTorch file holds, read without running anything in it (see the module docstring).

    `weights=False` reads no tensor data (tensors come back on the meta device, their sizes still checked): for
    the small values beside the weights. A TorchScript archive gives its root `ScriptObject` (`script_state_dict` gives its weights). Raises
    `FileRefused` for files that ask for code or more memory than they hold, `FileUnreadable` for anything
    else that is not a readable PyTorch file (both `UserError`s with one-line messages).
    """
    path = os.fspath(path)
    shown = printable(path)
    if os.path.isdir(path):
        raise FileUnreadable(shown, "it is a directory, not a file")
    if not os.path.exists(path):
        raise FileUnreadable(shown, "no such file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            _LOCAL.views_left = size + _VIEW_ALLOWANCE
            head = f.read(4)
            f.seek(0)
            if size == 0:
                raise _Malformed("the file is empty")
            if head[:2] == b"PK":
                return _load_zip(f, size, weights)
            return _load_legacy(f, size, weights)
    except _Refuse as e:
        raise FileRefused(shown, str(e)) from None
    except _Malformed as e:
        raise FileUnreadable(shown, str(e)) from None
    except MemoryError:
        raise FileRefused(shown, "it asks for more memory than there is") from None
    except OSError as e:
        raise FileUnreadable(shown, e.strerror or str(e)) from None


# ------------------------------------------------------------------ models built from what a file declares

def held_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (a dict or an iterable): what a file really supplied."""
    values = tensors.values() if isinstance(tensors, dict) else tensors
    seen = {}
    for t in values:
        if torch.is_tensor(t) and t.device.type != "meta":
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
    return sum(seen.values())
