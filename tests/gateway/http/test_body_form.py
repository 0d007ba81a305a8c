"""Uploads (audio transcriptions and translations, image edits): the model and stream flag read
from a multipart form, unit by unit, then end to end with the OpenAI SDK through a real gateway
to simulated backends that read the form with another parser (aiohttp's)."""

from __future__ import annotations

import gzip
import hashlib
import warnings
from collections.abc import Iterator

import httpx
import openai
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.defaults import FORM_FIELD_MAX_BYTES, FORM_MAX_HEADER_BYTES, FORM_MAX_PARTS
from gateway.errors import RequestInvalid
from gateway.http.body_form import form_model, is_form
from tests.support import (
    Gateway,
    Sim,
    UpstreamSpec,
    access_line,
    gateway_toml,
    serving,
    start_gateway,
    start_sim,
)

AUDIO = bytes(range(256)) * 64 + b"\r\n--not-the-boundary\r\nmodel\r\n"  # 16 KiB, CRLFs inside


def encoded(
    fields: dict[str, str], files: dict[str, tuple[str, bytes]] | None = None
) -> tuple[bytes, str]:
    """A form as the OpenAI SDK sends one: httpx's encoder, the SDK's transport."""
    req = httpx.Request("POST", "http://127.0.0.1/", data=fields, files=files or {})
    return req.read(), req.headers["content-type"]


def part(name: str, value: bytes, extra: str = "") -> bytes:
    head = f'--B\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode()
    return head + value + b"\r\n"


def refused(body: bytes, content_type: str = "multipart/form-data; boundary=B") -> str:
    with pytest.raises(RequestInvalid) as e:
        form_model(body, content_type)
    return e.value.message


def test_the_model_and_stream_of_an_sdk_form() -> None:
    body, ctype = encoded({"model": "whisper-1"}, {"file": ("a.wav", AUDIO)})
    assert form_model(body, ctype) == ("whisper-1", False)
    body, ctype = encoded({"stream": "true", "model": "whisper-1"}, {"file": ("a.wav", AUDIO)})
    assert form_model(body, ctype) == ("whisper-1", True)


@pytest.mark.parametrize(
    ("value", "stream"),
    [("true", True), ("True", True), ("1", True), ("false", False), ("", False)],
)
def test_stream_is_what_a_fastapi_backend_reads_as_true(value: str, stream: bool) -> None:
    body, ctype = encoded({"model": "m", "stream": value}, {"file": ("a.wav", b"x")})
    assert form_model(body, ctype) == ("m", stream)


@settings(deadline=None)  # a noisy machine's slow example is no failure
@given(
    model=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=60),
    data=st.binary(max_size=2000),
    model_first=st.booleans(),
)
def test_any_model_beside_any_file_reads_back(model: str, data: bytes, model_first: bool) -> None:
    fields = {"model": model, "language": "en"}
    body, ctype = encoded(fields, {"file": ("f.bin", data)})
    if not model_first:  # httpx puts fields first: build the other order by hand
        assume(b"--B" not in data)  # the hand-built form's boundary
        body = (
            part("file", data, '; filename="f.bin"') + part("model", model.encode()) + b"--B--\r\n"
        )
        ctype = "multipart/form-data; boundary=B"
    assert form_model(body, ctype) == (model, False)


def test_is_form_reads_the_media_type_not_its_case_or_parameters() -> None:
    assert is_form("multipart/form-data; boundary=x")
    assert is_form(" Multipart/Form-Data;boundary=x")
    assert not is_form("application/json")
    assert not is_form("multipart/mixed; boundary=x")
    assert not is_form("multipart/form-data-x; boundary=x")


def test_bad_forms_are_refused_with_what_is_wrong() -> None:
    ok = part("model", b"m") + b"--B--\r\n"
    assert form_model(ok, "multipart/form-data; boundary=B") == ("m", False)
    assert "no boundary" in refused(ok, "multipart/form-data")
    assert "not a valid multipart/form-data" in refused(b"model=m")
    assert "cut short" in refused(part("model", b"m") + part("file", b"partial"))
    assert 'no "model" field' in refused(part("language", b"en") + b"--B--\r\n")
    assert 'empty "model"' in refused(part("model", b"") + b"--B--\r\n")
    assert "more than one" in refused(part("model", b"a") + part("model", b"b") + b"--B--\r\n")
    assert "is a file" in refused(part("model", b"m", '; filename="m.txt"') + b"--B--\r\n")
    assert "not UTF-8" in refused(part("model", b"\xff\xfe") + b"--B--\r\n")
    long = part("model", b"m" * (FORM_FIELD_MAX_BYTES + 1)) + b"--B--\r\n"
    assert f"over {FORM_FIELD_MAX_BYTES} bytes" in refused(long)


def test_what_parsers_read_differently_is_refused() -> None:
    # Each of these let the gateway route on one model while aiohttp's parser (the sim's, as
    # Go's or Rust's) read another from the same bytes.
    ok = part("model", b"m") + b"--B--\r\n"
    for ctype in (
        "multipart/form-data; boundary=B; boundary=C",
        'multipart/form-data; x="a;boundary=C"; boundary=B',
        "multipart/form-data; boundary*=UTF-8''B; boundary=B",
    ):
        assert "boundary more than once" in refused(ok, ctype), ctype
    utf7 = "multipart/form-data; boundary=B; charset=utf-7"
    assert "charset=utf-7 is not supported" in refused(ok, utf7)
    assert form_model(ok, "multipart/form-data; boundary=B; charset=UTF-8") == ("m", False)
    extended = b"--B\r\nContent-Disposition: form-data; name*=UTF-8''model\r\n\r\nm\r\n--B--\r\n"
    assert "name*=" in refused(extended)
    twice = (
        b'--B\r\nContent-Disposition: form-data; name="model"\r\n'
        b'Content-Disposition: form-data; name="x"\r\n\r\nm\r\n--B--\r\n'
    )
    assert "two Content-Disposition headers" in refused(twice)
    named_twice = (
        b'--B\r\nContent-Disposition: form-data; name="x"; name="model"\r\n\r\nm\r\n--B--\r\n'
    )
    assert "names its field twice" in refused(named_twice)
    base64 = (
        b'--B\r\nContent-Disposition: form-data; name="model"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nbQ==\r\n--B--\r\n"
    )
    assert "Content-Transfer-Encoding" in refused(base64)  # aiohttp reads it as "m"


def test_a_form_of_thousands_of_parts_is_refused_at_the_cap() -> None:
    # Hundreds of thousands of tiny parts in 4 MiB (a few KB gzipped) held the event loop.
    many = b"--B\r\n\r\nx\r\n" * 50_000 + part("model", b"m") + b"--B--\r\n"
    assert f"more than {FORM_MAX_PARTS} parts" in refused(many)
    few = b"--B\r\n\r\nx\r\n" * (FORM_MAX_PARTS - 1) + part("model", b"m") + b"--B--\r\n"
    assert form_model(few, "multipart/form-data; boundary=B") == ("m", False)


def test_long_part_headers_are_refused_past_a_budget_for_the_whole_form() -> None:
    # Under the part cap, parts each with a 4 KB Content-Disposition of ";" (a few KB
    # gzipped) held the event loop for seconds.
    bloated = f'--B\r\nContent-Disposition: form-data; name="z"{";" * 4000}\r\n\r\nx\r\n'
    body = bloated.encode() * 20 + part("model", b"m") + b"--B--\r\n"
    assert f"over {FORM_MAX_HEADER_BYTES} bytes in all" in refused(body)


def test_a_filename_may_say_anything_and_ascii_is_utf8() -> None:
    body, ctype = encoded({"model": "m"}, {"file": ("ü é; name*=x.wav", b"RIFF")})
    assert form_model(body, ctype) == ("m", False)
    ok = part("model", b"m") + b"--B--\r\n"
    assert form_model(ok, "multipart/form-data; boundary=B; charset=us-ascii") == ("m", False)


def test_a_bad_form_names_the_field_at_fault() -> None:
    with pytest.raises(RequestInvalid) as e:
        form_model(
            part("stream", b"t", '; filename="s"') + b"--B--\r\n", "multipart/form-data; boundary=B"
        )
    assert e.value.param == "stream"


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, Sim]]]:
    tmp = tmp_path_factory.mktemp("uploads")
    sims = {
        "eu": start_sim(tmp, "eu", "eu-central", ["whisper"]),
        "us": start_sim(tmp, "us", "us-east", ["whisper-us"]),
    }
    ups = [
        UpstreamSpec("eu", "eu-central", sims["eu"].url, ["whisper"]),
        UpstreamSpec("us", "us-east", sims["us"].url, ["whisper-us"]),
    ]
    with serving(start_gateway(tmp, lambda port: gateway_toml(port, ups)), sims) as both:
        yield both


def described(data: bytes, name: str, model: str, region: str) -> str:
    """What the simulated server says it got: size, name and checksum of the file."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"{len(data)} bytes of {name} (sha256 {digest}) for {model} in {region}"


def test_the_sdk_transcribes_through_the_gateway_routed_by_the_forms_model(
    fleet: tuple[Gateway, dict[str, Sim]],
) -> None:
    gw, _ = fleet
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-us", file=("talk.wav", AUDIO)
    )
    assert raw.parse().text == described(AUDIO, "talk.wav", "whisper-us", "us-east")
    assert "upstream=us" in raw.headers["geogate-route"]
    line = access_line(gw, raw.headers["x-request-id"])
    assert (line["status"], line["model"], line["upstream"]) == (200, "whisper-us", "us")
    with warnings.catch_warnings():  # the SDK marks translations deprecated; the API has them
        warnings.simplefilter("ignore", DeprecationWarning)
        out = client.audio.translations.create(model="whisper", file=("talk.mp3", AUDIO))
    assert out.text == described(AUDIO, "talk.mp3", "whisper", "eu-central")


def streams_seen(gw: Gateway) -> float:
    """Requests counted as streams (their first token timed) in the gateway's metrics."""
    text = httpx.get(f"{gw.ops_url}/metrics").text
    mark = 'geogate_time_to_first_byte_seconds_count{region="eu-central",stream="true"} '
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(mark))


def test_a_streamed_transcription_is_a_stream(fleet: tuple[Gateway, dict[str, Sim]]) -> None:
    gw, _ = fleet
    before = streams_seen(gw)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    events = list(
        client.audio.transcriptions.create(model="whisper", file=("a.wav", AUDIO), stream=True)
    )
    assert [e.type for e in events][-1] == "transcript.text.done"
    assert events[-1].text == described(AUDIO, "a.wav", "whisper", "eu-central")  # type: ignore[union-attr]
    deltas = "".join(e.delta for e in events[:-1])  # type: ignore[union-attr]
    assert deltas.strip() == events[-1].text  # type: ignore[union-attr]
    assert streams_seen(gw) == before + 1


def test_a_compressed_form_is_read_and_sent_on_decoded(
    fleet: tuple[Gateway, dict[str, Sim]],
) -> None:
    gw, sims = fleet
    body, ctype = encoded({"model": "whisper"}, {"file": ("a.wav", AUDIO)})
    before = sims["eu"].stats()["paths"]
    r = httpx.post(
        f"{gw.url}/v1/audio/transcriptions",
        content=gzip.compress(body),
        headers={"content-type": ctype, "content-encoding": "gzip"},
    )
    assert r.status_code == 200, r.text
    assert "upstream=eu" in r.headers["geogate-route"]
    assert r.json()["text"] == described(AUDIO, "a.wav", "whisper", "eu-central")
    assert sims["eu"].stats()["paths"] != before


def test_a_bad_form_is_refused_at_the_gateway_and_never_sent(
    fleet: tuple[Gateway, dict[str, Sim]],
) -> None:
    gw, sims = fleet

    def uploads() -> list[object]:
        return [s.stats()["paths"].get("/v1/audio/transcriptions") for s in sims.values()]  # type: ignore[attr-defined]

    before = uploads()
    body, ctype = encoded({"language": "en"}, {"file": ("a.wav", AUDIO)})
    r = httpx.post(
        f"{gw.url}/v1/audio/transcriptions", content=body, headers={"content-type": ctype}
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("invalid_request", "model")
    assert 'no "model" field' in err["message"]
    cut = httpx.post(
        f"{gw.url}/v1/audio/transcriptions", content=body[:-30], headers={"content-type": ctype}
    )
    assert cut.status_code == 400 and "cut short" in cut.json()["error"]["message"]
    assert uploads() == before
