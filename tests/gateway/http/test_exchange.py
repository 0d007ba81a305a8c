"""gateway.http.exchange: what the access line says of a request refused, failed or cut, and
the region its metrics name."""

from __future__ import annotations

import json
import logging

import pytest

from gateway.http.exchange import LOGGED_TEXT_MAX, Exchange, logged_text
from gateway.routing.model import Candidate, Decision, Outcome, Reason, UpstreamView
from gateway.runtime import Routed
from geodb.location import Location


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


def _routed(ex: Exchange) -> Exchange:
    """``ex`` routed to "eu-1" (eu-central) first, then "us-1" (us-east)."""
    order = tuple(
        Candidate(
            UpstreamView(id=uid, region=region, models=frozenset({"m"})),
            *(10.0, 10.0, "distance", 0.0, True, False, "unknown"),
        )
        for uid, region in (("eu-1", "eu-central"), ("us-1", "us-east"))
    )
    decision = Decision(Outcome.ROUTED, order, (), Reason.LOWEST_SCORE)
    ex.routed = Routed(None, False, Location(50.1, 8.7, "DE"), decision)
    return ex


def test_the_metrics_region_is_the_one_that_served_after_a_failover() -> None:
    ex = _routed(_refused())
    assert ex.region == "eu-central"  # nothing answered: the first choice's failure
    ex.upstream, ex.served_region = "us-1", "us-east"
    assert ex.region == "us-east"
    assert Exchange("r", {}, 0.0).region == "-"  # before routing


def test_a_cut_response_says_so_in_its_access_line(caplog: pytest.LogCaptureFixture) -> None:
    ex = _routed(_refused())
    ex.status, ex.upstream, ex.served_region, ex.model = 200, "us-1", "us-east", "m"
    fields = ex.ecs_fields()
    assert fields["event.outcome"] == "success" and fields["geogate.aborted"] is None
    caplog.set_level(logging.INFO, logger="geogate.access")
    ex.log("text")
    assert json.loads(caplog.records[-1].getMessage())["aborted"] is None
    ex.aborted = "upstream_error"  # an SSE stream cut: its status stays the head's 200
    fields = ex.ecs_fields()
    assert fields["event.outcome"] == "failure" and fields["geogate.aborted"] == "upstream_error"
    assert fields["http.response.status_code"] == 200
    ex.log("text")
    line = json.loads(caplog.records[-1].getMessage())
    assert (line["status"], line["aborted"]) == (200, "upstream_error")


def test_a_head_requests_line_counts_no_body_bytes(caplog: pytest.LogCaptureFixture) -> None:
    # The answer's body is made (its Content-Length is the GET's) and the server drops it:
    # the line said 542 bytes for none sent.
    ex = Exchange("r", {"method": "HEAD", "path": "/v1/models"}, 0.0, status=200)
    ex.body_bytes = 542
    caplog.set_level(logging.INFO, logger="geogate.access")
    ex.log("text")
    assert json.loads(caplog.records[-1].getMessage())["bytes"] == 0
    assert ex.ecs_fields()["http.response.body.bytes"] == 0
    ex.scope["method"] = "GET"
    assert ex.ecs_fields()["http.response.body.bytes"] == 542
