"""Shared state: the ``StateStore`` protocol and its two stores.

``store`` says what a store is (a sync read side for the request path, an async control side);
``memory`` is one gateway's state, ``redis_store`` many gateways as one fleet. The fleet's
routing document has its pure rules in ``config_doc`` and its Redis I/O in ``config_io``;
``keys`` is the Redis key schema. ``settle`` decides which of two documents the fleet keeps
after Redis lost data; ``observations`` are the gateways' views in Redis; ``sync_log`` is what
the sync says.
"""
