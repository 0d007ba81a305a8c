"""What a stream that ended with no token counts as in the TTFT histogram
(geogate_time_to_first_byte_seconds, stream="true": the objective of deploy/prometheus). The
proxy (gateway.http.upstream) times a stream at its first token itself, at the first read that
carries one (gateway.traffic.carries_token) of an answer under 400; every other ending is this."""

from __future__ import annotations

from gateway.defaults import LOOP_STATUS


def no_token_s(
    status: int, elapsed_s: float, first_byte_s: float, cut: bool = False
) -> float | None:
    """The seconds a stream counts as, None when it is left out. ``status``: what the client
    got (the head's, for a stream cut after it; gateway.http.errors.status_of for one that
    failed before any byte reached the client); ``cut``: broken off after its head.

    - A 4xx is left out, the gateway's 429 included (every upstream tried was at capacity):
      nothing was generated, nor asked of a model that could start. The model server refused
      the request (400, 404, a prompt too long), or none had room and the client was told
      when to retry, and that retry is timed when served. Counted at its end, a few ms, each
      was a fast success that hid slow ones (a client retrying a bad request in a loop hid a
      region's slow first tokens); counted slow, a client's bug or shed load would page as
      slow generation. geogate_requests_total counts them by code, and
      geogate_upstream_attempts_total{outcome="status_429"} the load.
    - A 5xx, or a cut: the stream failed before any token and counts at least as slow as
      timeouts.first_byte_s, the longest wait for one, whatever its elapsed time (a 502 from
      refused connections takes milliseconds): slow under any objective below it.
    - A 508 (a request looping between gateways, gateway.http.intake) is left out as a 4xx
      is: no model was asked, and a client's own geogate-hops header can make one.
    - Otherwise (a 2xx that carried nothing generated): its end."""
    if 400 <= status < 500 or status == LOOP_STATUS:
        return None
    if cut or status >= 500:
        return max(elapsed_s, first_byte_s)
    return elapsed_s
