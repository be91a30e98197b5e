"""The aggregate and its vocabulary: columns, running moments, the rules a record must
meet, limits, per-experiment settings, idempotency keys and the read results.

Everything else builds on this floor; it imports nothing of the exporter above it.
"""
