"""``geogate dns export``: the config's regions as GeoDNS records, written to a file or stdout."""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.cli.errors import CLIError, OneLineParser
from gateway.cli.files import out_path
from gateway.defaults import DNS_CHECK_INTERVAL_S, DNS_CHECK_TIMEOUT_S, DNS_TTL_S
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.dns.options import Options
    from gateway.dns.tables import Entry

FORMATS = ("powerdns", "route53")
# A file the export replaces is kept readable as it was; a new one is readable by all (0644,
# whatever the umask): the DNS server reads it as its own user, and it holds what DNS
# publishes anyway (the regions' addresses and public URLs).
NEW_FILE_MODE = 0o644
# The serial of the zone an export replaces (its own SOA line: "@ IN SOA mname rname serial").
SOA_SERIAL = re.compile(r"^\S+(?:\s+\d+)?(?:\s+IN)?\s+SOA\s+\S+\s+\S+\s+\(?\s*(\d+)\b", re.M)


def add_parser(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    dns = sub.add_parser("dns", help="GeoDNS: the global hostname's records")
    dsub = dns.add_subparsers(dest="dns_command", required=True, metavar="SUBCOMMAND")
    ex = dsub.add_parser(
        "export",
        help="records that send each client to its best healthy region",
        description="Write GeoDNS records for the global hostname: a BIND zone with PowerDNS "
        "LUA records, or Route 53 record sets as JSON for Terraform. The router orders the "
        "regions for each country and continent; each region's /readyz decides its health.",
    )
    ex.add_argument("--config", type=Path, required=True, help="gateway config (regions[])")
    ex.add_argument("--format", choices=FORMATS, required=True)
    ex.add_argument("--zone", required=True, help="the DNS zone, e.g. example.com")
    ex.add_argument("--name", required=True, help="the hostname in it, e.g. api (@: the apex)")
    ex.add_argument("--ttl", type=int, default=DNS_TTL_S, help=f"seconds (default {DNS_TTL_S})")
    ex.add_argument(
        "--check-interval",
        type=int,
        default=DNS_CHECK_INTERVAL_S,
        help=f"seconds between /readyz checks (default {DNS_CHECK_INTERVAL_S}; Route 53: 10 or 30)",
    )
    ex.add_argument(
        "--check-timeout",
        type=int,
        default=None,  # DNS_CHECK_TIMEOUT_S: None tells one not given
        help=f"seconds a /readyz check may take (default {DNS_CHECK_TIMEOUT_S}; PowerDNS only)",
    )
    ex.add_argument(
        "--ns",
        action="append",
        default=[],
        metavar="NAME[=ADDRESS,...]",
        help="the zone's name server (repeatable; default ns1.ZONE; PowerDNS only): relative to "
        "the zone, as --name and as a zone file reads it (ns2: ns2.ZONE), unless it ends with "
        "'.' (ns1.example.net.; without it such a dotted name is refused); a host name, not "
        "an address. A name in the zone takes its addresses after '=' (ns1=192.0.2.53), "
        "written as its A and AAAA records: without them the export warns",
    )
    ex.add_argument(
        "--alias-regions",
        action="store_true",
        help="Route 53 only: a region with a url and no addresses gets A links with no "
        "addresses (GeogateRegion), which Terraform makes aliases to its load balancer "
        "(deploy/terraform/aws/example)",
    )
    ex.add_argument("--out", type=out_path, help="file to write (default: stdout)")


def export(args: argparse.Namespace) -> None:
    # Here, not at the top: the parser imports this module for every command.
    from gateway.config_file import load_config
    from gateway.dns import powerdns, route53, tables
    from gateway.dns.options import OptionError, next_serial, options

    # The flags alone decide these: said before the file is read. ``is not None``: a
    # --check-timeout of 0 is one given.
    given = (("--check-timeout", args.check_timeout is not None), ("--ns", bool(args.ns)))
    powerdns_only = [f for f, v in given if v]
    if args.format == "route53" and powerdns_only:  # was taken and silently ignored
        raise CLIError(
            f"dns export: {' and '.join(powerdns_only)} "
            f"{'are' if len(powerdns_only) > 1 else 'is'} for --format powerdns; Route 53 "
            "times its own health checks and names the zone's name servers itself"
        )
    if args.format == "route53" and args.check_interval > max(route53.INTERVALS):
        # Route 53 checks every 10 or 30 s: a longer interval was quietly made 30.
        raise CLIError(
            f"dns export: --check-interval {args.check_interval}: Route 53 checks every "
            f"{' or '.join(map(str, route53.INTERVALS))} s; give one of those (a shorter "
            "interval is taken up to the next)"
        )
    if args.alias_regions and args.format != "route53":
        raise CLIError(
            f"dns export: --alias-regions is for --format route53 (an alias to a load "
            f"balancer); {args.format} answers addresses: set regions[].addresses"
        )
    _not_the_config(args.out, args.config)
    config = load_config(args.config)
    try:
        opt = options(
            args.zone,
            args.name,
            ttl=args.ttl,
            check_interval_s=args.check_interval,
            check_timeout_s=DNS_CHECK_TIMEOUT_S
            if args.check_timeout is None
            else args.check_timeout,
            # Grows with each export, past the serial of the zone it replaces: secondaries
            # transfer a zone only when its serial is newer.
            serial=next_serial(int(time.time()), _previous_serial(args.out)),
            nameservers=tuple(args.ns),
        )
    except ValueError as exc:
        raise CLIError(f"dns export: {exc}") from None
    try:
        entries = tables.entries(config, alias_regions=args.alias_regions)
        _checked_apart(entries, opt.fqdn)
        computed = tables.compute(config, entries)
        if args.format == "powerdns":
            text = powerdns.zone_file(computed, entries, opt, str(args.config))
        else:
            doc = route53.record_sets(computed, entries, opt, str(args.config))
            text = json.dumps(doc, indent=2) + "\n"
    except OptionError as exc:  # a name the records make too long (Route 53's chain names)
        raise CLIError(f"dns export: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"config error in {args.config}: {exc}") from None
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            _write(args.out, text)
        except OSError as exc:
            raise CLIError(f"cannot write {args.out}: {_why(exc, args.out)}") from None
    if args.format == "powerdns":
        _warn_unaddressed(opt)
    else:
        _warn_unreachable(route53.unreachable_checks(doc["health_checks"]))
    if args.out is None:
        return
    orders = len(computed.orders())
    aliases = sum(e.alias for e in entries.values())
    aliased = f" ({aliases} as load balancer aliases)" if aliases else ""
    print(
        f"wrote {args.out}: {opt.fqdn} over {len(entries)} region(s){aliased}, {orders} order(s)",
        file=sys.stderr,
    )


def _not_the_config(out: Path | None, config: Path) -> None:
    """--out naming the config file it reads replaced the config with the zone, unsaid (the
    gateway's next start: "invalid TOML"), as redis.state_file refuses to."""
    if out is not None and out.exists() and config.exists() and out.samefile(config):
        raise CLIError(f"dns export: --out {out} is the config file it reads; give another path")


def _warn_unaddressed(opt: Options) -> None:
    for ns in opt.unaddressed:
        # Said, not refused: the parent's glue serves until a resolver asks the zone itself.
        # The name as --ns takes it: relative where that is one label, else in full.
        relative = ns.removesuffix("." + opt.zone)
        named = relative if "." not in relative else ns
        print(
            f"dns export: warning: name server {ns} is in the zone and has no address in "
            f"it: resolvers that ask the zone for it get none; give --ns {named}=ADDRESS, or "
            "a name server outside the zone (--ns ns1.example.net.)",
            file=sys.stderr,
        )


def _warn_unreachable(checks: list[tuple[str, str]]) -> None:
    for region, address in checks:
        # Said, not refused: an export of a loopback test config is still one to read.
        print(
            f"dns export: warning: region {region}'s health check is at {address}, an "
            "address Route 53's checkers cannot reach (local, private, shared or "
            "reserved): AWS refuses that health check; give the region a public address "
            "or host name",
            file=sys.stderr,
        )


def _checked_apart(entries: dict[str, Entry], fqdn: str) -> None:
    """A region checked at the global name itself is checked wherever these records send the
    checker, not in that region: its gateway's fall would go unseen."""
    name = fqdn.rstrip(".").lower()
    for rid, e in entries.items():
        if (urlsplit(e.health_url).hostname or "").rstrip(".") == name:
            raise ConfigError(
                f"region {rid}: its url's host is {name}, the name these records answer: its "
                "health would be checked in whichever region DNS chose; give each region a "
                "url of its own host (its load balancer's or a per-region name)"
            )


def _previous_serial(out: Path | None) -> int | None:
    """The SOA serial of the zone file at ``out``, if there is one to read."""
    if out is None:
        return None
    try:
        # Non-blocking: opening a FIFO to read would wait for a writer (this export is it).
        fd = os.open(out, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None  # none yet, or unreadable: writing it says what is wrong
    # Looked at before open(): open() of a directory's descriptor raised IsADirectoryError, a
    # traceback for --out DIR, where the write then says "Is a directory" in one line.
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory, a pipe or a device: not read
        os.close(fd)
        return None
    with open(fd, "rb") as f:
        found = SOA_SERIAL.search(f.read().decode("utf-8", "replace"))
    return int(found[1]) % 2**32 if found else None


def _why(exc: OSError, out: Path) -> str:
    """The error, naming the file it is about when that is not ``out`` itself (the temporary
    file's directory, or where a symlink points)."""
    name = exc.filename
    if name is None or os.fspath(name) == os.fspath(out):
        return exc.strerror or str(exc)
    return f"{name}: {exc.strerror or exc}"


def _write(out: Path, text: str) -> None:
    """Write ``text`` to ``out``: a regular file (or none yet) is replaced whole, through a
    temporary file renamed over it, so a DNS server reloading the zone never sees half of it.
    The rename goes to where ``out`` points: through a symlink (a zone file linked into the
    server's directory) it replaces the file, not the link. Anything else that exists (a
    pipe, /dev/stdout) is written as it is: renaming over it would replace the device node.

    The new file takes the replaced one's mode, owner and group (as far as this process may
    set them): a zone file 0640 root:pdns stays readable by the server, where a file made
    afresh would have had this process's umask and group. A new file is NEW_FILE_MODE."""
    try:
        st: os.stat_result | None = os.stat(out)
    except FileNotFoundError:
        st = None  # nothing there yet, or a link to a file still to be made
    if st is not None and not stat.S_ISREG(st.st_mode):
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
        return
    real = Path(os.path.realpath(out))
    # A name of its own (O_EXCL, unpredictable): a fixed "out.tmp" would follow a symlink left
    # there, or fail on a directory of that name, and two exports would share it.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    except OSError as exc:
        exc.filename = f"a temporary file in {real.parent}"
        raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            _keep_access(f.fileno(), st)
            os.fsync(f.fileno())  # the data before the rename: no empty zone after a crash
        os.replace(tmp, real)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _keep_access(fd: int, st: os.stat_result | None) -> None:
    """Give the file at ``fd`` the mode, owner and group of ``st`` (the file it replaces), as
    far as this process may: root sets both; another user may set a group it is in; else the
    file keeps this process's. Owner first: a change of owner clears set-id bits. Where the
    group could not be kept, the old mode would lock its readers out (root:pdns 0640 become
    user:user 0640): it is widened to NEW_FILE_MODE's reads."""
    if st is None:
        os.fchmod(fd, NEW_FILE_MODE)
        return
    for uid, gid in ((st.st_uid, st.st_gid), (-1, st.st_gid)):
        try:
            os.fchown(fd, uid, gid)
            break
        except PermissionError:
            continue
    mode = stat.S_IMODE(st.st_mode)
    if os.fstat(fd).st_gid != st.st_gid:
        mode |= NEW_FILE_MODE
    os.fchmod(fd, mode)
