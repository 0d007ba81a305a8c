"""The tables as a BIND zone for PowerDNS: one LUA record per address family that looks up the
client's country (else continent, else "unknown") and answers the first region of that
place's order whose ``/readyz`` answers 200, through ``ifurlextup``.

The AAAA record chooses among all the order's regions and keeps the chosen one's IPv6
addresses: for a region with none it answers no record (NODATA) and a dual-stack client uses
the A answer, never another region's IPv6 address (see ``tables.answered``; here it holds
through failover too). PowerDNS (4.7) gives such an answer an EDNS client-subnet scope of /0,
and a LUA record has no way to set one: a resolver may cache that NODATA for all its clients
for the SOA minimum (the TTL). The A record chooses among the order's regions with IPv4
addresses only: an IPv4-only client has no other way in, so an IPv6-only region sends it on
to the next region that has IPv4 (the same region as AAAA wherever the chosen one has both).

Why ``ifurlextup`` and not ``ifurlup``: ``ifurlup`` fetches one URL from every address, so
every region would need the same URL and port; ``ifurlextup`` checks each region at its own
gateway URL, and its groups are tried in order, which is the failover order. PowerDNS runs the
checks in the background (every ``lua-health-checks-interval`` seconds; PowerDNS 5 also takes
the per-check ``interval`` written here) and shares one check per URL across all records.

LUA record text is split into strings of at most 255 bytes, between tokens: a zone transfer
would split longer ones anyway, every 255 bytes, inside a token as likely as not (PowerDNS's
docs warn of it), and the secondary's Lua breaks. So each health URL is named once (``h``),
not once per address, and a region's addresses may go over several strings.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.dns.options import Options, fits
from gateway.dns.tables import Entry, Order, Tables, answered, family
from gateway.errors import ConfigError
from geodb.countries import country_continent

MAX_STRING = 255  # bytes in one DNS character-string
MAX_MESSAGE = 65535  # bytes in one DNS message over TCP (a 16-bit length), so in one AXFR chunk
# Kept free in that message for what a transfer may add to the records: a TSIG record (key
# name up to 255 bytes, hmac-sha512's 64-byte MAC: under 350 bytes) and an EDNS OPT record.
MESSAGE_MARGIN = 512
LUA_TYPE_BYTES = 2  # a LUA record's data starts with the type it answers
RR_FIXED = 10  # a record's type, class, TTL and data length, after its owner name
HEADER = 12  # a DNS message's header


def _wire(fqdn: str) -> int:
    """A fully qualified name's bytes uncompressed ("a.b." is 5: a length byte per label and
    the root's): the worst case, as a server need not compress it."""
    return len(fqdn.encode("ascii")) + 1


def _comment(s: str) -> str:
    """``s`` made safe for a zone-file comment: a comment ends at the line break, so a line
    break in a config file's name (or in anything else written there) would start a record
    of the file's choosing. Every character that is not printable is written escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in s)


def _lua(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _zone_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _size(s: str) -> int:
    return len(s.encode("utf-8"))


def _lines(tokens: list[str]) -> list[str]:
    """``tokens`` joined, cut between tokens into lines of at most 254 bytes (each ends in a
    space when joined, so a cut is a space in the Lua: every token boundary must allow one)."""
    lines, line = [], ""
    for token in tokens:
        if line and _size(line) + _size(token) > MAX_STRING - 1:
            lines.append(line)
            line = ""
        line += token
    return [*lines, line]


def _listed(items: list[str], head: str, tail: str) -> list[str]:
    """The tokens of ``head`` + items joined by "," + ``tail``."""
    tokens = [head, *(item + "," for item in items[:-1]), *items[-1:]]
    tokens[-1] += tail
    return tokens


def _lua_pieces(s: str, budget: int = 200) -> list[str]:
    """``s`` as Lua string literals joined by "..", each of at most ``budget`` bytes: a URL may
    be longer than one DNS string, and a cut inside a literal would put a space in it."""
    pieces, piece = [], ""
    for ch in s:
        if piece and _size(_lua(piece + ch)) > budget:
            pieces.append(_lua(piece) + "..")
            piece = ""
        piece += ch
    return [*pieces, _lua(piece)]


def _region_tokens(entries: Mapping[str, Entry]) -> tuple[list[str], list[str]]:
    """Each region's health URL once (h[i]), then its group for ifurlextup: every address of
    the region, both families, checked at that URL. One token per address: a region with many
    addresses is cut between them, never inside one."""
    urls = [";local h={"]
    for i, e in enumerate(entries.values(), start=1):
        urls += _lua_pieces(e.health_url)
        urls[-1] += "," if i < len(entries) else "}"
    tokens = ["local r={"]
    for i, e in enumerate(entries.values(), start=1):
        for j, a in enumerate(e.addresses):
            first, last = j == 0, j == len(e.addresses) - 1
            tail = ("}" + ("," if i < len(entries) else "}")) if last else ","
            tokens.append(("{" if first else "") + f"[{_lua(a)}]=h[{i}]" + tail)
    return urls, tokens


def lua_script(
    tables: Tables, entries: Mapping[str, Entry], version: int, opt: Options
) -> list[str]:
    """The Lua of the record of IP ``version``, as lines of at most 254 bytes (each ends in a
    space when joined)."""
    index = {rid: i + 1 for i, rid in enumerate(entries)}  # Lua tables count from 1
    orders: list[Order] = []
    order_no: dict[Order, int] = {}
    v4 = family(entries, 4)

    def number(order: Order) -> int:
        # A: the order's regions with IPv4 (tables.answered), so an IPv6-only region is passed
        # over for IPv4 clients. AAAA: all of them, the chosen one's IPv6 or none (NODATA).
        order = answered(order, v4, 4) if version == 4 else order
        if order not in order_no:
            orders.append(order)
            order_no[order] = len(orders)
        return order_no[order]

    default = number(tables.default)
    by_continent = {c: number(o) for c, o in sorted(tables.continents.items())}
    continents = [f"{c}={n}" for c, n in by_continent.items()]
    # Only the countries whose order is not their continent's; one geodb cannot place gets a
    # table by continent when its order depends on it (tables.Tables.unplaced).
    countries = [
        f"{c}={n}"
        for c, n in ((c, number(o)) for c, o in sorted(tables.countries.items()))
        if n != by_continent.get(country_continent(c) or "")
    ]
    countries += [
        f"{c}={{" + ",".join(f"{k}={number(o)}" for k, o in sorted(per.items())) + "}"
        for c, per in sorted(tables.unplaced.items())
    ]
    # One token per region of an order, so an order of many regions (over a line's 254 bytes
    # at 88 of them) is cut between two, never inside a number.
    ordered = [
        tok
        for i, o in enumerate(orders, start=1)
        for tok in _listed([str(index[r]) for r in o], "{", "}" if i == len(orders) else "},")
    ]
    checks = (
        f"selector='all',backupSelector='all',timeout='{opt.check_timeout_s}',"
        f"interval='{opt.check_interval_s}'"
    )
    sections = [
        # Every address of a region, both families: the check is per URL, so the A and the
        # AAAA record see the same regions up and choose the same one.
        *_region_tokens(entries),
        ["local o={", *ordered[:-1], ordered[-1] + "}"],
        _listed(continents, "local c={", "}"),
        _listed(countries, "local t={", "}"),
        # PowerDNS answers codes in lower case ("sg", "as"); the tables are upper case.
        ["local n=continentCode():upper() local k=t[countryCode():upper()]"],
        [f"if type(k)=='table' then k=k[n] end k=k or c[n] or {default}"],
        ["local u={} for i,x in ipairs(o[k]) do u[i]=r[x] end"],
        # An A order empty (a residency rule whose regions have no IPv4): no groups to check.
        ["if #u==0 then return {} end"] if not all(orders) else [],
        # The chosen region's addresses of this family (PowerDNS writes IPv6 ones with ":"):
        # none, an answer without records (NODATA), when it has none.
        [f"local a={{}} for _,x in ipairs(ifurlextup(u,{{{checks}}})) do"],
        [f"if {'' if version == 6 else 'not '}x:find(':',1,true) then a[#a+1]=x end end"],
        ["return a"],
    ]
    return [line for tokens in sections if tokens for line in _lines(tokens)]


def _legend(tables: Tables, entries: Mapping[str, Entry]) -> list[str]:
    """Comment lines an operator can review: each order and the places that get it."""
    out = []
    for order in tables.orders():
        places = ["default"] if order == tables.default else []
        continents = [c for c, o in sorted(tables.continents.items()) if o == order]
        countries = [c for c, o in sorted(tables.countries.items()) if o == order]
        for c, per in sorted(tables.unplaced.items()):  # "XK on AF AS": by GeoIP's continent
            on = [k for k, o in sorted(per.items()) if o == order]
            countries += [f"{c} on {' '.join(on)}"] if on else []
        places += [f"continents {' '.join(continents)}"] if continents else []
        places += [f"countries {' '.join(countries)}"] if countries else []
        out.append(f"  {' > '.join(order)}: {'; '.join(places)}")
    out.append("  health: " + ", ".join(f"{r} {e.health_url}" for r, e in entries.items()))
    return out


def zone_file(tables: Tables, entries: Mapping[str, Entry], opt: Options, source: str) -> str:
    rname = fits(f"hostmaster.{opt.zone}", "the SOA's mailbox", "shorten --zone")
    comments = [
        f"geogate dns export --format powerdns, from {source}: do not edit, export again.",
        f"{opt.fqdn} answers each client (EDNS client subnet, else its resolver) with the",
        "first region of its place's order whose /readyz answers 200: AAAA its IPv6 addresses",
        "(none when it has none: never another region's), A its IPv4 ones, or those of the",
        "next such region that has IPv4. Orders (country, else continent, else default):",
        *_legend(tables, entries),
        "PowerDNS needs: enable-lua-records=yes, launch=bind,geoip (geoip-database-files: a",
        "City or Country .mmdb), edns-subnet-processing=yes; PowerDNS 4 checks every",
        f"lua-health-checks-interval seconds (set it to {opt.check_interval_s}).",
    ]
    lines = [
        *(f"; {_comment(c)}" for c in comments),
        f"$ORIGIN {opt.zone}",
        f"$TTL {opt.ttl}",
        f"@ IN SOA {opt.ns[0]} {rname} {opt.serial} 10800 3600 604800 {opt.ttl}",
        *(f"@ IN NS {ns}" for ns in opt.ns),
        *(f"{ns} IN {'AAAA' if ':' in a else 'A'} {a}" for ns, a in opt.glue),
    ]
    scripts: dict[str, list[str]] = {}
    for rtype, version in (("A", 4), ("AAAA", 6)):
        if not family(entries, version):
            continue
        script = lua_script(tables, entries, version, opt)
        # A zone transfer cuts a longer string every 255 bytes, wherever that falls in the Lua.
        too_long = [s for s in script if _size(s + " ") > MAX_STRING]
        if too_long:  # one token longer than a line (a region's URL is cut in pieces)
            raise ConfigError(
                f"dns: a piece of the LUA record is {_size(too_long[0] + ' ')} bytes, over "
                f"a zone string's {MAX_STRING}: {too_long[0][:80]}"
            )
        scripts[rtype] = script
    _fits_one_message(scripts, opt, rname, len(entries))
    for rtype, script in scripts.items():
        lines.append(f"{opt.name} {opt.ttl} IN LUA {rtype} (")
        lines.extend(f"  {_zone_string(s + ' ')}" for s in script)
        lines.append(")")
    return "\n".join(lines) + "\n"


def _rdata(script: list[str]) -> int:
    """A LUA record's data: its type, then each string with its length byte."""
    return LUA_TYPE_BYTES + sum(_size(s + " ") + 1 for s in script)


def _fits_one_message(
    scripts: Mapping[str, list[str]], opt: Options, rname: str, regions: int
) -> None:
    """PowerDNS (4.7) sends a zone transfer in chunks of up to 100 records, each chunk one
    message, and a message over TCP holds 65,535 bytes: past that it writes nothing ("attempt
    to write an oversized chunk") and the secondary gets no zone. This zone's few records all
    go in the first chunk, so what counts is all of them together, not each LUA record alone
    (two of 32,765 and 32,761 bytes each fit a record, and the transfer failed). Counted here
    as the worst case: the header, the question, every record with its owner uncompressed,
    the SOA twice (a transfer opens and closes with it), and MESSAGE_MARGIN for TSIG and EDNS.
    (PowerDNS 4.7 transferred up to 65,448 bytes of LUA data in a zone like the tests'; this
    count accepts up to about 700 fewer.)"""
    soa = _wire(opt.zone) + RR_FIXED + _wire(opt.ns[0]) + _wire(rname) + 20
    ns = sum(_wire(opt.zone) + RR_FIXED + _wire(n) for n in opt.ns)
    ns += sum(_wire(n) + RR_FIXED + (16 if ":" in a else 4) for n, a in opt.glue)
    lua = {rtype: _rdata(script) for rtype, script in scripts.items()}
    owners = len(lua) * (_wire(opt.fqdn) + RR_FIXED)
    total = HEADER + _wire(opt.zone) + 4 + 2 * soa + ns + owners + sum(lua.values())
    if total > MAX_MESSAGE - MESSAGE_MARGIN:
        sizes = " and ".join(f"{rtype} {n}" for rtype, n in lua.items())
        raise ConfigError(
            f"the zone's records would be {total} bytes (LUA records of {opt.fqdn}: {sizes}), "
            f"over the {MAX_MESSAGE - MESSAGE_MARGIN} a zone transfer's message holds "
            f"({MAX_MESSAGE}, less {MESSAGE_MARGIN} for TSIG and EDNS): PowerDNS would "
            f"transfer nothing to a secondary; {regions} regions' addresses and health URLs "
            "are too many for one name: export --format route53, or fewer"
        )
