"""A real pdns_server on loopback for the GeoDNS tests, and each region's /readyz on its own
loopback address (the regions' "entries"), answering 200 or 503 at will."""

from __future__ import annotations

import http.server
import json
import re
import socket
import subprocess
import threading
from pathlib import Path

from gateway.cli.procs import free_port, spawn
from tests.gateway.dns.configs import ADDRESSES

CHECK_INTERVAL_S = 1  # the export's --check-interval and pdns's lua-health-checks-interval


def strings_of(text: str, rtype: str) -> list[str]:
    """The character-strings of the zone's LUA record of ``rtype``, as the server stores them
    (each ends in the space that joins it to the next)."""
    body = text.split(f"IN LUA {rtype} (\n")[1].split("\n)\n")[0]
    return [json.loads(line.strip()) for line in body.splitlines()]  # no escapes in these


class Health:
    """Each region's /readyz, on the region's own loopback address: 200 or 503 at will."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.servers: dict[str, http.server.ThreadingHTTPServer] = {}
        health = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                address = self.server.server_address
                assert isinstance(address, tuple)  # an AF_INET server's: (host, port)
                region = next(r for r, a in ADDRESSES.items() if a == address[0])
                ok = region not in health.down
                body = b'{"ready": true}' if ok else b'{"ready": false}'
                self.send_response(200 if ok else 503)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        for region, addr in ADDRESSES.items():
            srv = http.server.ThreadingHTTPServer((addr, 0), Handler)
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            self.servers[region] = srv

    def url(self, region: str) -> str:
        host, port = self.servers[region].server_address[:2]
        assert isinstance(host, str)  # bound to a text address above
        return f"http://{host}:{port}"

    def close(self) -> None:
        for srv in self.servers.values():
            srv.shutdown()
            srv.server_close()


def free_udp_and_tcp_port() -> int:
    """A loopback port free for both UDP and TCP: DNS listens on both. Taken from free_port,
    below the ephemeral range, where no outgoing connection of another test takes it for its
    own end before pdns_server binds it."""
    for _ in range(50):
        port = free_port()  # free for TCP
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both UDP and TCP")


class PowerDNS:
    def __init__(self, tmp: Path, zones: dict[str, Path], mmdb: Path) -> None:
        self.port = free_udp_and_tcp_port()
        self.zones = zones
        (tmp / "named.conf").write_text(
            "".join(f'zone "{z}" {{ type master; file "{f}"; }};\n' for z, f in zones.items())
        )
        self.log = tmp / "pdns.log"
        self.proc = spawn(
            [
                "pdns_server",
                "--no-config",
                "--daemon=no",
                "--guardian=no",
                "--disable-syslog",
                "--write-pid=no",
                f"--socket-dir={tmp}",
                "--local-address=127.0.0.1",
                f"--local-port={self.port}",
                "--launch=bind,geoip",  # geoip: countryCode() for the LUA records
                f"--bind-config={tmp / 'named.conf'}",
                f"--geoip-database-files=mmdb:{mmdb}",
                "--enable-lua-records=yes",
                "--edns-subnet-processing=yes",
                f"--lua-health-checks-interval={CHECK_INTERVAL_S}",
                # Nothing leaves the machine: no security-status query, no resolver, no cache
                # that would hold an answer past a region's fall.
                "--security-poll-suffix=",
                "--resolver=no",
                "--cache-ttl=0",
                "--query-cache-ttl=0",
                "--negquery-cache-ttl=0",
            ],
            self.log,
        )

    def dig(self, subnet: str, name: str, rtype: str = "A") -> tuple[str, list[str]]:
        """The status and the answers for a client in ``subnet``, as dig prints them."""
        p = subprocess.run(
            [
                "dig",
                "+noall",
                "+comments",
                "+answer",
                "+tries=1",
                "+time=2",
                f"+subnet={subnet}/32",
                "-p",
                str(self.port),
                "@127.0.0.1",
                name,
                rtype,
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        status = re.search(r"status: (\w+)", p.stdout)
        rows = [line.split() for line in p.stdout.splitlines() if line and line[0] != ";"]
        found = sorted(r[4] for r in rows if len(r) == 5 and r[3] == rtype)
        return (status[1] if status else p.stdout.strip() or p.stderr.strip()), found

    def axfr_lua(self, zone: str) -> dict[int, list[str]]:
        """The zone's LUA records as a secondary receives them (dig AXFR): record type -> its
        character-strings. dig knows no LUA type: it prints the RDATA in hex (RFC 3597), the
        type (2 bytes) then each string, its length (1 byte) first."""
        p = subprocess.run(
            ["dig", "+noall", "+answer", "-p", str(self.port), "@127.0.0.1", zone, "AXFR"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        out: dict[int, list[str]] = {}
        for line in p.stdout.splitlines():
            if "TYPE65402" in line:
                data = bytes.fromhex("".join(line.split("\\#")[1].split()[1:]))
                strings, i = [], 2
                while i < len(data):
                    strings.append(data[i + 1 : i + 1 + data[i]].decode())
                    i += 1 + data[i]
                out[int.from_bytes(data[:2], "big")] = strings
        return out
