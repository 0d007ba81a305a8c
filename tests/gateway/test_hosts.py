"""Whether a host or URL names this machine (gateway.hosts)."""

from __future__ import annotations

import pytest

from gateway.hosts import loopback_host, own_listener


def test_own_listener_is_the_gateways_port_on_loopback_or_its_own_host() -> None:
    assert own_listener("http://127.0.0.1:8080", "0.0.0.0", 8080)
    assert own_listener("http://LOCALHOST.:8080/v1", "127.0.0.1", 8080)
    assert own_listener("http://[::1]", "::1", 80)
    assert own_listener("https://gw.example:443", "GW.example", 443)  # any case
    assert not own_listener("http://127.0.0.1:8000", "127.0.0.1", 8080)
    assert not own_listener("http://eu.gw.example:8080", "0.0.0.0", 8080)
    assert not own_listener("https://127.0.0.1", "127.0.0.1", 8080)  # 443


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "[::]", "[::ffff:127.0.0.1]", "127.0.0.2", "localhost"]
)
def test_own_listener_knows_this_machine_in_its_usual_spellings(host: str) -> None:
    # Each connects to this machine (0.0.0.0 and :: on Linux too): a loop that passed --check.
    assert own_listener(f"http://{host}:8080", "127.0.0.1", 8080)
    assert not own_listener("http://10.1.2.3:8080", "127.0.0.1", 8080)
    assert not own_listener("http://[::ffff:10.1.2.3]:8080", "127.0.0.1", 8080)


@pytest.mark.parametrize(
    "host", ["127.1", "0x7f000001", "2130706433", "0177.0.0.1", "0", "127.0.1"]
)
def test_own_listener_knows_inet_atons_shorter_spellings(host: str) -> None:
    # The resolver connects to each as to 127.0.0.1 (or 0.0.0.0): a loop all the same.
    assert own_listener(f"http://{host}:8080", "127.0.0.1", 8080)


@pytest.mark.parametrize("host", ["10.1", "0x0a000001", "1.2.3", "256.1", "08", "0x", "1e5", "a.b"])
def test_what_is_not_this_machine_in_any_spelling_is_not_the_listener(host: str) -> None:
    # 10.0.0.1 and 1.2.0.3 by inet_aton; the rest are not addresses (names: not ours either).
    assert not own_listener(f"http://{host}:8080", "127.0.0.1", 8080)


def test_loopback_host_is_a_loopback_address_or_localhost() -> None:
    assert loopback_host("127.0.0.1") and loopback_host("::1") and loopback_host("LocalHost.")
    assert not loopback_host("0.0.0.0") and not loopback_host("example.com")
