"""The pure routing core: no I/O, no clock reads, no randomness but the ``rng`` it is handed.

``model`` holds the values (what the router sees, what it decides), ``policy`` the operator's
rules, ``router`` the decision itself; ``health``, ``load``, ``members`` and ``retry_budget``
are the small state machines and pure transforms the layers above feed with observations.
This package imports no asyncio, aiohttp, redis or starlette (an import-linter contract).
"""
