"""A DNS-discovered member of an upstream, through the client: dialled at its address, but
still its upstream to TLS (server name, certificate check) and HTTP (Host, credentials)."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Literal

import pytest

from gateway.client import Client
from gateway.config import Upstream
from gateway.routing.members import expand
from tests.gateway.client.scripted import Scripted, ok, run
from tests.support import self_signed_cert


def _member(url: str, address: tuple[str, int], discovery: Literal["dns", "srv"] = "dns") -> str:
    srv = "_llm._tcp.localhost" if discovery == "srv" else ""
    named = Upstream(id="d", region="eu", url=url, models=("m",), discovery=discovery, srv=srv)
    (member,) = expand([named], {"d": [address]})
    return member.url


def test_an_https_member_is_dialled_at_its_address_and_verified_by_its_upstreams_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate is checked against the upstream's name, verification on (SSL_CERT_FILE
    trusts the test's certificate, as for any OpenSSL program): a member's URL once held only
    its IP, so a certificate for the name alone failed on every member of an https upstream."""
    cert, key = self_signed_cert(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    sni: list[str | None] = []

    def seen(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni.append(name)  # the name the client asked for, and checks the certificate for

    tls.sni_callback = seen
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))

    async def main() -> None:
        async with Scripted(ok(b"secure"), tls=tls) as srv:
            port = int(srv.url.rsplit(":", 1)[1])
            client = Client(2.0)
            dns = _member(f"https://al:pw@localhost:{port}/base", ("127.0.0.1", port))
            resp = await client.request("GET", dns + "/health")
            assert (resp.status, await resp.read()) == (200, b"secure")
            # SRV gives the port too: only the address dialled reaches the server (nothing
            # listens on the URL's port 9), and the Host is still the upstream's.
            srv_member = _member("https://localhost:9", ("127.0.0.1", port), "srv")
            assert await (await client.request("GET", srv_member + "/x")).read() == b"secure"
            await client.close()
        assert sni == ["localhost", "localhost"]  # not None: no SNI is sent for an IP
        auth = b"Authorization: Basic " + base64.b64encode(b"al:pw")
        assert srv.heads[0] == (
            b"GET /base/health HTTP/1.1\r\nHost: localhost:%d\r\n%s\r\n\r\n" % (port, auth)
        )
        assert srv.heads[1] == b"GET /x HTTP/1.1\r\nHost: localhost:9\r\n\r\n"

    run(main())


def test_a_plain_http_member_is_its_address_as_before() -> None:
    async def main() -> None:
        async with Scripted(ok()) as srv:
            port = int(srv.url.rsplit(":", 1)[1])
            member = _member(f"http://pool.invalid:{port}/p", ("127.0.0.1", port))
            assert member == f"http://127.0.0.1:{port}/p"
            client = Client(1.0)
            await (await client.request("GET", member + "/health")).read()
            await client.close()
        assert srv.heads[0] == b"GET /p/health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port

    run(main())
