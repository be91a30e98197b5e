"""Where a record enters: the JSON batch of `POST /api/v1/records` and OTLP/HTTP
metrics, parsed and checked into the core's parts before anything is applied."""
