"""Growable column tables: one row per series, one numpy array per figure.

Rows are addressed by a key tuple of names; freed rows are reused so that
clearing experiments does not leak.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

K = TypeVar("K", bound=Hashable)

# name -> (dtype, fill value for a fresh row, extra trailing shape)
ColumnSpec = dict[str, tuple[type[Any], float, tuple[int, ...]]]


class Table(Generic[K]):
    """Rows keyed by `K`, columns as numpy arrays sized to capacity."""

    def __init__(self, spec: ColumnSpec, capacity: int = 64) -> None:
        self._spec = spec
        self._capacity = capacity
        self.clear()

    def clear(self) -> None:
        """Back to no rows, with the initial capacity."""
        self.ids: dict[K, int] = {}
        self.keys: list[K | None] = []
        self._free: list[int] = []
        self.columns: dict[str, npt.NDArray[Any]] = {
            name: np.full((self._capacity, *shape), fill, dtype=dtype)
            for name, (dtype, fill, shape) in self._spec.items()
        }

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        """Rows in use or freed: the prefix of every column worth copying."""
        return len(self.keys)

    def row(self, key: K) -> int:
        """The row of `key`, created (filled with the spec's defaults) if new."""
        found = self.ids.get(key)
        if found is not None:
            return found
        if self._free:
            index = self._free.pop()
            self.keys[index] = key
        else:
            index = len(self.keys)
            self.keys.append(key)
            if index >= len(next(iter(self.columns.values()))):
                self._grow()
        self.ids[key] = index
        return index

    def rows(self, keys: Iterable[K]) -> npt.NDArray[np.intp]:
        return np.fromiter(map(self.row, keys), dtype=np.intp)

    def remove(self, key: K) -> None:
        index = self.ids.pop(key)
        self.keys[index] = None
        for name, (_, fill, _) in self._spec.items():
            self.columns[name][index] = fill
        self._free.append(index)

    def _grow(self) -> None:
        for name, column in self.columns.items():
            _, fill, _ = self._spec[name]
            bigger = np.full((len(column) * 2, *column.shape[1:]), fill, dtype=column.dtype)
            bigger[: len(column)] = column
            self.columns[name] = bigger
