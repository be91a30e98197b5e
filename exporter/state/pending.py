"""The in-process recorders' pending records, taken out as rows and typed columns.

`record_query` and `record_event` keep a record as one atomic `list.extend` of flat
values (its series' code first, a float: `Table.code`), the cheapest thing a call can
do. The fold turns the list into columns: `struct` packs a run of whole records in one
C call, and numpy reads the packed bytes as a table of records, where a pass per column
(`np.fromiter`) costs ~30 ns a record more. The packing takes the values exactly as
`fromiter` would (an int latency becomes the float `float()` makes; a success is a
checked bool).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..core.aggregate import FEW
from ..core.tables import Table

_CHUNK: Final = 256  # records packed by one prebuilt Struct (the rest by a cached one)


@dataclass(frozen=True)
class Layout:
    """A pending record's values after its code: their `struct` codes and column types."""

    codes: str
    dtypes: tuple[str, ...]
    _record: np.dtype[Any] = field(init=False)
    _chunk: struct.Struct = field(init=False)

    def __post_init__(self) -> None:
        names = [f"f{i}" for i in range(len(self.dtypes) + 1)]
        record = np.dtype({"names": names, "formats": ["<f8", *self.dtypes]})  # packed
        object.__setattr__(self, "_record", record)
        object.__setattr__(self, "_chunk", struct.Struct(self._format(_CHUNK)))

    @property
    def width(self) -> int:
        return len(self.dtypes) + 1

    def _format(self, records: int) -> str:
        return "<" + ("d" + self.codes) * records

    def table(self, pending: list[Any], end: int) -> npt.NDArray[Any]:
        """pending[:end] (whole records) as one structured array."""
        step = _CHUNK * self.width
        full = end - end % step
        pack = self._chunk.pack
        parts = [pack(*pending[i : i + step]) for i in range(0, full, step)]
        if full < end:
            parts.append(struct.pack(self._format((end - full) // self.width), *pending[full:end]))
        return np.frombuffer(b"".join(parts), self._record)


QUERIES: Final = Layout("d?d", ("<f8", "?", "<f8"))  # latency, success, time
EVENTS: Final = Layout("dd", ("<f8", "<f8"))  # value, time


def drain(
    table: Table[Any], pending: list[Any], layout: Layout
) -> tuple[npt.NDArray[np.intp], list[Any]]:
    """Take what is pending now, as rows and typed columns (plain lists when few),
    leaving out the records whose series is gone (cleared after they were checked).
    Each record came in one atomic extend, so the length is whole records; records
    appended meanwhile land after it, and deleting the prefix read leaves them."""
    width = layout.width
    end = len(pending) // width * width
    size = end // width
    if size <= FEW:  # the small-batch folds take plain Python numbers
        rows = table.live(np.fromiter(pending[0:end:width], np.float64, size))
        plain = [pending[k:end:width] for k in range(1, width)]
        del pending[:end]
        if rows.min() >= 0:
            return rows, plain
        live = np.flatnonzero(rows >= 0).tolist()
        return rows[live], [[column[i] for i in live] for column in plain]
    records = layout.table(pending, end)
    del pending[:end]
    names = records.dtype.names
    assert names is not None
    rows = table.live(np.ascontiguousarray(records[names[0]]))
    held = None if rows.min() >= 0 else rows >= 0
    columns = [np.ascontiguousarray(records[name][held] if held is not None else records[name])
               for name in names[1:]]  # fmt: skip
    if held is None:
        return rows, columns
    rows = rows[held]
    if len(rows) <= FEW:  # few left: the small-batch folds take plain Python numbers
        return rows, [column.tolist() for column in columns]
    return rows, columns
