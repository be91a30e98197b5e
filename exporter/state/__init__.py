"""Where records are kept: `ABMetrics`, the one owner of the aggregate (its lock, its
pending buffer, its read API), and the store that makes it durable in a data dir."""
