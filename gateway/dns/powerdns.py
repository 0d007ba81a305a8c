"""The tables as a BIND zone for PowerDNS: one LUA record per address family that looks up the
client's country (else continent, else "unknown") and answers the first region of that
place's order whose ``/readyz`` answers 200, through ``ifurlextup``.

Both records choose among the same regions with all their addresses, so they choose the same
region, and each keeps that region's addresses of its own family: an AAAA query for a region
with no IPv6 address gets no record (NODATA) and the client uses the A answer, never another
region's IPv6 address (see ``tables.answered``; here it holds through failover too).

Why ``ifurlextup`` and not ``ifurlup``: ``ifurlup`` fetches one URL from every address, so
every region would need the same URL and port; ``ifurlextup`` checks each region at its own
gateway URL, and its groups are tried in order, which is the failover order. PowerDNS runs the
checks in the background (every ``lua-health-checks-interval`` seconds; PowerDNS 5 also takes
the per-check ``interval`` written here) and shares one check per URL across all records.

LUA record text is split into strings of at most 255 bytes: a zone transfer would split longer
ones anyway, possibly inside a token (PowerDNS's docs warn of it).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.dns.options import Options
from gateway.dns.tables import Entry, Order, Tables, family
from geodb.countries import country_continent

MAX_STRING = 255  # bytes in one DNS character-string


def _lua(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _zone_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _chunks(items: list[str], head: str, tail: str) -> list[str]:
    """``head`` + items joined by "," + ``tail``, cut between items into lines that fit."""
    lines, line = [], head
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else tail)
        if len(line) + len(piece) > MAX_STRING - 1 and line:
            lines.append(line)
            line = ""
        line += piece
    if not items:
        line += tail
    lines.append(line)
    return lines


def lua_script(
    tables: Tables, entries: Mapping[str, Entry], version: int, opt: Options
) -> list[str]:
    """The Lua of the record of IP ``version``, as lines of at most 254 bytes (each ends in a
    space when joined)."""
    index = {rid: i + 1 for i, rid in enumerate(entries)}  # Lua tables count from 1
    # Every address of a region, both families: the check is per URL, so the A and the AAAA
    # record see the same regions up and choose the same one.
    units = [
        "{" + ",".join(f"[{_lua(a)}]={_lua(e.health_url)}" for a in e.addresses) + "}"
        for e in entries.values()
    ]
    orders: list[Order] = []
    order_no: dict[Order, int] = {}

    def number(order: Order) -> int:
        if order not in order_no:
            orders.append(order)
            order_no[order] = len(orders)
        return order_no[order]

    default = number(tables.default)
    by_continent = {c: number(o) for c, o in sorted(tables.continents.items())}
    continents = [f"{c}={n}" for c, n in by_continent.items()]
    # Only the countries whose order is not their continent's.
    countries = [
        f"{c}={n}"
        for c, n in ((c, number(o)) for c, o in sorted(tables.countries.items()))
        if n != by_continent.get(country_continent(c) or "")
    ]
    ordered = ["{" + ",".join(str(index[r]) for r in o) + "}" for o in orders]
    checks = (
        f"selector='all',backupSelector='all',timeout='{opt.check_timeout_s}',"
        f"interval='{opt.check_interval_s}'"
    )
    return [
        *_chunks(units, ";local r={", "}"),
        *_chunks(ordered, "local o={", "}"),
        *_chunks(continents, "local c={", "}"),
        *_chunks(countries, "local t={", "}"),
        # PowerDNS answers codes in lower case ("sg", "as"); the tables are upper case.
        f"local k=t[countryCode():upper()] or c[continentCode():upper()] or {default}",
        "local u={} for i,x in ipairs(o[k]) do u[i]=r[x] end",
        # The chosen region's addresses of this family (PowerDNS writes IPv6 ones with ":"):
        # none, an answer without records (NODATA), when it has none.
        f"local a={{}} for _,x in ipairs(ifurlextup(u,{{{checks}}})) do",
        f"if {'' if version == 6 else 'not '}x:find(':',1,true) then a[#a+1]=x end end",
        "return a",
    ]


def _legend(tables: Tables, entries: Mapping[str, Entry]) -> list[str]:
    """Comment lines an operator can review: each order and the places that get it."""
    out = []
    for order in tables.orders():
        places = ["default"] if order == tables.default else []
        continents = [c for c, o in sorted(tables.continents.items()) if o == order]
        countries = [c for c, o in sorted(tables.countries.items()) if o == order]
        places += [f"continents {' '.join(continents)}"] if continents else []
        places += [f"countries {' '.join(countries)}"] if countries else []
        out.append(f";   {' > '.join(order)}: {'; '.join(places)}")
    out.append(";   health: " + ", ".join(f"{r} {e.health_url}" for r, e in entries.items()))
    return out


def zone_file(tables: Tables, entries: Mapping[str, Entry], opt: Options, source: str) -> str:
    lines = [
        f"; geogate dns export --format powerdns, from {source}: do not edit, export again.",
        f"; {opt.fqdn} answers each client (EDNS client subnet, else its resolver) with the",
        "; first region of its place's order whose /readyz answers 200: A its IPv4 addresses,",
        "; AAAA its IPv6 ones (none when it has none: never another region's). Orders",
        "; (country, else continent, else default):",
        *_legend(tables, entries),
        "; PowerDNS needs: enable-lua-records=yes, launch=bind,geoip (geoip-database-files: a",
        "; City or Country .mmdb), edns-subnet-processing=yes; PowerDNS 4 checks every",
        f"; lua-health-checks-interval seconds (set it to {opt.check_interval_s}).",
        f"$ORIGIN {opt.zone}",
        f"$TTL {opt.ttl}",
        f"@ IN SOA {opt.ns[0]} hostmaster.{opt.zone} {opt.serial} 10800 3600 604800 {opt.ttl}",
        *(f"@ IN NS {ns}" for ns in opt.ns),
    ]
    for rtype, version in (("A", 4), ("AAAA", 6)):
        if not family(entries, version):
            continue
        script = lua_script(tables, entries, version, opt)
        lines.append(f"{opt.name} {opt.ttl} IN LUA {rtype} (")
        lines.extend(f"  {_zone_string(s + ' ')}" for s in script)
        lines.append(")")
    return "\n".join(lines) + "\n"
