"""The HTTP layer: the only part of the gateway that speaks HTTP.

``app`` builds the ASGI app and its lifespan; ``endpoints`` serves the gateway's own paths;
``intake`` takes a ``/v1/*`` request in (body, client, route) as one ``Exchange``;
``upstream`` runs its attempts against upstreams and streams the answer back; ``admin`` is the
operator API; ``headers`` the header rules; ``errors`` maps the domain's errors to OpenAI-shaped
HTTP errors; ``asgi`` the small ASGI helpers they share.
"""
