"""geogate's gateway, in layers; each imports only the ones below it (import-linter checks):

  cli/      the ``geogate`` command          server.py   uvicorn (h1.py), granian or hypercorn
  http/     the only part that speaks HTTP   watch/      probes, load polls, DNS, GeoIP reload
  runtime   what one process holds           fleet/      the state store: memory or Redis
  routing/  the pure router                  config, defaults, errors, metrics, checks, logs,
  dns/      GeoDNS records (pure)            ticks: leaves

A request: ``http.intake`` reads the body into an ``Exchange``, ``Runtime.locate_and_route``
finds the client (trusted proxies, GeoIP) and asks ``routing.router.route`` for candidates over
the store's snapshot; ``http.upstream`` tries them in order, failing over before the first
byte, and streams the answer back; outcomes flow into ``fleet`` for the next decision.
"""
