"""The in-process engine: checkpoints loaded once, prefix KV caches, continuous batching on one decode thread per device."""
