"""Named registries: each choice the user can name (an annotation format, a decoder, an exporter, a schedule, a
source of weights) is written once, where it is implemented, and everything that lists or checks the choices
(CLI `choices=`, config validation, error lines) reads the registry.

    DECODERS = Registry("decoder", key="data.decoder", builtin=("ila.data.decode",))

    @DECODERS.register("pyav", description="PyAV (FFmpeg), seeking to keyframes")
    def open_pyav(path, ...): ...

    DECODERS.names()            # ("pyav", ...), in registration order
    DECODERS.get("pyav").obj    # the registered object; a one-line UserError naming the choices otherwise

`builtin`: modules that register the library's own entries, imported by name on the first look-up. A low layer
(the config) can so hold a registry whose entries live in a higher one (the engine) without importing it.
"""
from __future__ import annotations

import importlib
import reprlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ila.errors import UserError

_REPR = reprlib.Repr()                  # a bounded repr of a refused value (it may be anything a config held)
_REPR.maxstring = _REPR.maxother = 60


@dataclass(frozen=True)
class Entry:
    """One registered choice: its name, the object that implements it and what the rest of ila may ask of it."""

    name: str
    obj: Any
    description: str = ""
    info: dict = field(default_factory=dict)

    def __getattr__(self, item: str):
        try:
            return self.__dict__["info"][item]
        except KeyError:
            raise AttributeError(item) from None


class Registry:
    """Names -> entries, in registration order."""

    def __init__(self, kind: str, key: str | None = None, builtin: tuple[str, ...] = ()):
        self.kind, self.key, self.builtin = kind, key, builtin
        self._entries: dict[str, Entry] = {}
        self._loaded = not builtin

    def register(self, name: str, obj: Any = None, *, description: str = "", **info) -> Callable:
        """Register `obj` as `name` (or, without `obj`, a decorator that registers what it decorates)."""
        if not isinstance(name, str) or not name or not name.replace("-", "_").replace(".", "_").isidentifier():
            raise ValueError(f"a {self.kind}'s name is a short word, not {name!r}")

        def add(target):
            present = self._entries.get(name)
            if present is not None and present.obj is not target:
                raise ValueError(f"{self.kind} {name!r} is already registered (by "
                                 f"{getattr(present.obj, '__module__', '?')})")
            self._entries[name] = Entry(name, target, description, dict(info))
            return target

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> Entry:
        self._load()
        return self._entries.pop(name)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self.builtin:
                importlib.import_module(module)

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        self._load()
        return iter(list(self._entries.values()))

    def get(self, name: object, key: str | None = None) -> Entry:
        """The entry `name`; a one-line UserError naming the config key (or flag) and the registered names."""
        self._load()
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise UserError(f"{key or self.key or self.kind}={_REPR.repr(name)} is not allowed; use one of "
                            f"{', '.join(self._entries)}")
        return entry
