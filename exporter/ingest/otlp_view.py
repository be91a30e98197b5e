"""A flat view of an OTLP histogram for the columnar checks.

Reading a point field by field through the protobuf runtime costs a call per number
(a repeated field's numbers one by one), several times what the checks themselves
cost. This view reads the same bytes with a schema in which the packed
`bucket_counts` and `explicit_bounds` are plain bytes (one read, then numpy) and each
attribute is its serialized `KeyValue` (an identity to look up, parsed only when new).
The histogram is re-serialized before it is viewed (`otlp._columns` does it once for
this and `otlp_wire`), so repeated numbers sent unpacked arrive packed: the view sees
exactly what the message holds.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.metrics.v1.metrics_pb2 import Histogram, HistogramDataPoint

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE: Final = "abtest_exporter.otlp_view"


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    label: int,
    default: str | None = None,
) -> None:
    added = message.field.add(name=name, number=number, type=kind, label=label)
    if default is not None:
        added.default_value = default


def _schema() -> Any:
    real = HistogramDataPoint.DESCRIPTOR.fields_by_name
    file = descriptor_pb2.FileDescriptorProto(
        name="abtest_exporter_otlp_view.proto", package=_PACKAGE, syntax="proto2"
    )
    point = file.message_type.add(name="Point")
    optional, repeated = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    # the same field numbers and wire types as HistogramDataPoint, except where noted
    _field(point, "attributes", real["attributes"].number, _F.TYPE_BYTES, repeated)
    for name in ("start_time_unix_nano", "time_unix_nano", "count"):
        _field(point, name, real[name].number, _F.TYPE_FIXED64, optional)
    for name in ("sum", "min", "max"):  # NaN when not sent (a sent NaN: ask HasField)
        _field(point, name, real[name].number, _F.TYPE_DOUBLE, optional, "nan")
    for name in ("bucket_counts", "explicit_bounds"):  # packed: one length-delimited run
        _field(point, name, real[name].number, _F.TYPE_BYTES, optional)
    _field(point, "flags", real["flags"].number, _F.TYPE_UINT32, optional)
    histogram = file.message_type.add(name="Histogram")
    histogram.field.add(
        name="data_points",
        number=Histogram.DESCRIPTOR.fields_by_name["data_points"].number,
        type=_F.TYPE_MESSAGE,
        label=repeated,
        type_name=f".{_PACKAGE}.Point",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Histogram"))


_VIEW: Final = _schema()


def view(serialized: bytes) -> Any:
    """The points of a histogram (as its `SerializeToString` gives it) as view messages
    (same order, same values)."""
    return _VIEW.FromString(serialized).data_points
