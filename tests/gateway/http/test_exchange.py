"""gateway.http.exchange: what the access line says of a request refused or failed."""

from __future__ import annotations

from gateway.http.exchange import LOGGED_TEXT_MAX, Exchange, logged_text


def _refused() -> Exchange:
    scope = {"method": "POST", "path": "/v1/chat/completions", "http_version": "1.1"}
    ex = Exchange("rid-1", scope, 0.0, model="m" * 5000, status=400)
    ex.client = "203.0.113.7"
    return ex


def test_ecs_fields_name_the_client_of_an_unrouted_request_and_cut_the_model() -> None:
    fields = _refused().ecs_fields()
    assert fields["client.ip"] == "203.0.113.7"
    assert "client.geo.country_iso_code" not in fields  # not located: not routed
    assert fields["geogate.model"] == "m" * LOGGED_TEXT_MAX + "..."


def test_logged_text_keeps_a_short_string_as_it_is() -> None:
    assert logged_text("gpt-4o") == "gpt-4o"
    assert logged_text("x" * LOGGED_TEXT_MAX) == "x" * LOGGED_TEXT_MAX
    assert logged_text("x" * (LOGGED_TEXT_MAX + 1)) == "x" * LOGGED_TEXT_MAX + "..."


def test_ecs_fields_name_the_upstream_tried_when_none_answered() -> None:
    ex = _refused()
    assert "geogate.upstream" not in {k for k, v in ex.ecs_fields().items() if v is not None}
    ex.status, ex.tried = 504, "us-1"  # it timed out: the error answer is the gateway's
    assert ex.ecs_fields()["geogate.upstream"] == "us-1"
    assert ex.upstream == "-"  # nothing was served: traffic counts stay without it
