"""The HTTP process: routes, guards, one refusal path, settings, the exporter's own
figures, background tasks and the demo. Only the command line sits above it."""
