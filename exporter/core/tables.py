"""Growable column tables: one row per series, one numpy array per figure.

Rows are addressed by a key tuple of names; freed rows are reused so that
clearing experiments does not leak. A row's code (`code`) names the row and the series
that holds it, so a record kept by code finds no row once its series is gone, even when
the row has been reused (`live`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from itertools import count
from typing import Any, Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt

K = TypeVar("K", bound=Hashable)

# name -> (dtype, fill value for a fresh row, extra trailing shape)
ColumnSpec = dict[str, tuple[type[Any], float, tuple[int, ...]]]

# Every series a row takes gets a serial no other one has in this process, in every
# table (a table replaced whole leaves no code that fits the new one): codes stay
# unique until 2**29 - 1 series have been made, then taken again in the same order (never
# twice in a row, never 0). itertools.count is atomic under the GIL.
_serials = count(0)
_SERIAL_CYCLE = (1 << 29) - 1  # serials are 1 .. 2**29 - 1
_ROW_BITS = 24
_ROW_MASK = (1 << _ROW_BITS) - 1
# A code (serial, then row) takes 53 bits, so a float holds it exactly: the pending lists
# pack it as a double, a third cheaper a record than a 64-bit int (struct reads an int of
# more than 30 bits through a generic byte conversion).
MAX_ROWS: Final = 1 << _ROW_BITS


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
        self._serials = np.zeros(self._capacity, dtype=np.int64)  # 0: a free row
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
            if index >= MAX_ROWS:  # the limits keep far below: max_series <= MAX_ROWS
                raise OverflowError(f"a table holds at most {MAX_ROWS} series")
            self.keys.append(key)
            if index >= len(self._serials):
                self._grow()
        self.ids[key] = index
        self._serials[index] = next(_serials) % _SERIAL_CYCLE + 1
        return index

    def code(self, row: int) -> float:
        """The row's code: its row number and its series' serial, as one float (exact)."""
        return float(int(self._serials[row]) << _ROW_BITS | row)

    def live(self, codes: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
        """The rows of codes, -1 for a code whose series is gone."""
        whole = codes.astype(np.int64)
        rows = (whole & _ROW_MASK).astype(np.intp)
        # clip: a row past the end (the table was cleared) meets another row's serial
        held = np.take(self._serials, rows, mode="clip") == whole >> _ROW_BITS
        return np.where(held, rows, -1)

    def rows(self, keys: Iterable[K]) -> npt.NDArray[np.intp]:
        return np.fromiter(map(self.row, keys), dtype=np.intp)

    def remove(self, key: K) -> None:
        index = self.ids.pop(key)
        self.keys[index] = None
        self._serials[index] = 0
        for name, (_, fill, _) in self._spec.items():
            self.columns[name][index] = fill
        self._free.append(index)

    def _grow(self) -> None:
        serials = np.zeros(len(self._serials) * 2, dtype=np.int64)
        serials[: len(self._serials)] = self._serials
        self._serials = serials
        for name, column in self.columns.items():
            _, fill, _ = self._spec[name]
            bigger = np.full((len(column) * 2, *column.shape[1:]), fill, dtype=column.dtype)
            bigger[: len(column)] = column
            self.columns[name] = bigger


class RowMarks:
    """The rows changed since the store last looked, as one flag per row: marking a
    fold's rows is one vectorised store, where adding them to a set of row numbers cost
    40-140 ns a row (as much as a third of an in-process record); and a flag takes one
    byte a row, a set's entry ~30."""

    __slots__ = ("_any", "_flags")

    def __init__(self, capacity: int = 64) -> None:
        self._flags = np.zeros(capacity, dtype=np.bool_)
        self._any = False

    def __bool__(self) -> bool:
        return self._any

    @property
    def capacity(self) -> int:
        return len(self._flags)

    def mark(self, rows: npt.NDArray[np.intp] | Sequence[int]) -> None:
        if len(rows) == 0:
            return
        top = int(rows.max()) if isinstance(rows, np.ndarray) else max(rows)
        if top >= len(self._flags):
            flags = np.zeros(max(2 * len(self._flags), top + 1), dtype=np.bool_)
            flags[: len(self._flags)] = self._flags
            self._flags = flags
        self._flags[rows] = True
        self._any = True

    def add(self, row: int) -> None:
        self.mark([row])

    def rows(self) -> list[int]:
        """The marked rows, ascending."""
        return np.flatnonzero(self._flags).tolist() if self._any else []

    def __eq__(self, other: object) -> bool:
        """The same rows marked (whatever the room for more)."""
        return self.rows() == other.rows() if isinstance(other, RowMarks) else NotImplemented

    __hash__ = None  # type: ignore[assignment]
