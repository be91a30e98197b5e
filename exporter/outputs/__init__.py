"""Where figures leave: `/metrics` in both formats, the comparison gauges kept fresh,
the OTLP push-out, the results page and the process metrics."""
