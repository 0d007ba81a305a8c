"""``geogate plan``'s model, pure (no I/O): where to put GPUs before spending, from demand,
candidate regions with prices and measured throughput, and latency objectives."""
