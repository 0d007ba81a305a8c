"""The ``geogate`` command: ``main`` parses and dispatches; ``commands`` runs the gateway and
the GeoIP tools; ``ctl`` operates a fleet through Redis; ``demo`` is the quickstart; ``procs``
starts and stops geogate processes for the demo, the tests and the benchmarks. The model
server (``backend``) and the simulated backend (``sim-backend``) are handed their arguments
whole: they live in the ``backend`` package with parsers of their own."""
