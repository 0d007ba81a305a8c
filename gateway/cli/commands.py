"""``geogate gateway`` and the GeoIP tools (``geodb lookup``, ``geodb build``)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
from pathlib import Path
from typing import Any

from gateway.checks import address, redis_url
from gateway.cli.errors import CLIError
from gateway.config import Config
from gateway.config_file import load_config
from gateway.defaults import BROAD_V4_PREFIX, BROAD_V6_PREFIX
from gateway.hosts import loopback_host
from geodb.clientip import parse_ip
from geodb.location import Location
from geodb.reader import GeoIPSource, GeoSource


def gateway(args: argparse.Namespace) -> None:
    from gateway import server
    from gateway.runtime import build_runtime, setup_logging

    if args.redis:
        # Checked here, so that a bad one is said as the flag given, not as the variable it
        # becomes (GEOGATE_REDIS__URL); the message masks its password.
        try:
            redis_url(args.redis)
        except ValueError as exc:
            raise CLIError(f"--redis {exc}") from None
    setup_logging()
    if args.redis:
        # An override like any other: worker processes read it from the environment too.
        os.environ["GEOGATE_REDIS__URL"] = args.redis
    config = load_config(args.config)
    setup_logging(config.log)
    build_runtime(config)  # fail here, in one line, on a bad GeoIP file — not in a worker
    _warn_open_audience(config)
    _warn_short_tokens(config)
    _warn_shadowed_rules(config)
    _warn_broad_trust(config)
    _warn_unlocated_residency(config)
    _warn_open_ops(config)
    if args.check:
        # What a start checks: the file, its values, the files it names (GeoIP, TLS,
        # state_file's directory) and its listen addresses, but for a port in use: the
        # gateway being replaced holds it.
        server.can_listen(config.server.host, config.server.port, "server.port")
        if config.ops.port:
            server.can_listen(config.ops.host, config.ops.port, "ops.port")
        print(checked(config, args.config))
        return
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup: ignored still
        signal.signal(signal.SIGHUP, _hup_drains)  # forked workers inherit it
    server.run(config, args.config)


def checked(config: Config, path: Path) -> str:
    """``gateway --check``'s line: what the config describes, so that a wrong file (the
    staging one, an old copy) shows as well as a bad one."""
    s, o = config.server, config.ops
    models = sorted({m for u in config.upstreams for m in u.models})
    ops = f"ops on {address(o.host, o.port)}" if o.port else "no ops listener"
    state = "shared in Redis" if config.redis.url else "in memory"
    return (
        f"{path}: ok: gateway in {config.gateway.region}, {len(config.upstreams)} upstream(s) "
        f"in {len({u.region for u in config.upstreams})} of {len(config.regions)} region(s), "
        f"{len(models)} model(s); listens on {address(s.host, s.port)} ({s.engine}, {s.workers} "
        f"worker(s)), {ops}; state {state}"
    )


def _warn_shadowed_rules(config: Config) -> None:
    """A residency rule's country or continent that an earlier rule takes first: said at
    start (not refused, so that a deployment that upgrades keeps starting), since the rule
    the operator wrote for it never decides."""
    from gateway.routing.policy import policy_from, shadowed
    from gateway.runtime import log

    for line in shadowed(policy_from(config).residency):
        log.warning("%s: the first rule that matches a client applies; put it first", line)


def _warn_broad_trust(config: Config) -> None:
    """A trusted proxy network wider than any balancer's (an IPv4 /8, an IPv6 /32): every
    client in it may set its own address (X-Forwarded-For), and so its location and residency
    rule. Said at start, not refused: some deployments do trust a whole private range."""
    from gateway.runtime import log
    from geodb.clientip import parse_networks

    for net in parse_networks(config.gateway.trusted_proxies):
        if net.prefixlen < (BROAD_V4_PREFIX if net.version == 4 else BROAD_V6_PREFIX):
            log.warning(
                "gateway.trusted_proxies includes %s (%d addresses): any client in it may set "
                "its own address, and so its location and residency rule, with "
                "X-Forwarded-For; list your load balancers' addresses",
                net,
                net.num_addresses,
            )


def _warn_open_ops(config: Config) -> None:
    """An ops listener off loopback without a token. Said by ``--check`` too (it was said at
    start only): the check is where a config is looked at before it runs."""
    from gateway.runtime import log

    ops = config.ops
    if ops.port and not ops.token and not loopback_host(ops.host):
        log.warning(
            "ops listener on %s without ops.token: anyone who reaches it (by an address, or a "
            "name in ops.hosts) reads upstream ids, errors and GeoIP lookups; set ops.token or "
            "keep ops.host on loopback",
            ops.host,
        )


def _warn_unlocated_residency(config: Config) -> None:
    """Residency rules with no GeoIP database: the clients no signed edge header locates are
    all at geoip.default, so a rule applies to every one of them or to none, whatever their
    country. Said at start, not refused: a gateway behind the edge Worker alone needs none."""
    from gateway.runtime import log

    if not config.residency or config.geoip.database is not None:
        return
    home = config.geoip.default
    if home.country or home.continent:
        code = home.country or home.continent
        kind = "country" if home.country else "continent"
        place, rules = f"{kind} {code}", f"the rules matching {code} apply to all of them"
    else:
        place, rules = "no country", "no rule applies to any of them"
    who = "clients without a signed edge header are" if config.edge.keys else "every client is"
    log.warning(
        "residency rules without geoip.database: %s located at geoip.default (%s), so %s; "
        "set geoip.database to apply the rules by each client's own country",
        who,
        place,
        rules,
    )


def _warn_open_audience(config: Config) -> None:
    """Edge keys without ``edge.audiences``: a header is then checked against the Host the
    client itself sends, so one captured on its way to one gateway sharing the key can be
    replayed at another with that Host. Said once at start; not refused, so that a
    deployment that upgrades keeps starting."""
    from gateway.runtime import log

    if config.edge.keys and not config.edge.audiences:
        log.warning(
            "edge.keys without edge.audiences: a signed edge header is checked against the "
            "Host the client sends, so one captured for another gateway that shares the key "
            "can be replayed here with that Host; set edge.audiences to this gateway's "
            "public host names"
        )


# Shorter tokens are said at start: the ops listener takes 10 wrong tokens a minute per address
# and worker (gateway.http.auth_throttle), enough for a short or a dictionary word to fall to a
# patient guesser from many addresses (16 random characters of [A-Za-z0-9] are ~95 bits).
SHORT_TOKEN_CHARS = 16


def _warn_short_tokens(config: Config) -> None:
    """Names (never values) of the admin operators and the ops listener whose token is short.
    Not refused: a deployment that upgrades keeps starting."""
    from gateway.runtime import log

    operators = config.admin.operators().items()
    short = [f"admin operator {n!r}" for n, tok in operators if len(tok) < SHORT_TOKEN_CHARS]
    if config.ops.token and len(config.ops.token) < SHORT_TOKEN_CHARS:
        short.append("ops.token")
    if short:
        log.warning(
            "tokens shorter than %d characters (%s): the ops listener takes a few wrong tokens "
            "a minute per address, so a short token can still be guessed from many; use long "
            "random ones (openssl rand -hex 16)",
            SHORT_TOKEN_CHARS,
            ", ".join(short),
        )


def _hup_drains(_sig: int, _frame: object) -> None:
    """geogate has no reload (routing changes go through the admin API, or the fleet's
    Redis): SIGHUP (a closed terminal, or a reload out of habit) drains and stops as SIGTERM
    does, said in the log, instead of Python's default, which ends the process at once with
    every stream cut."""
    from gateway.runtime import log

    log.warning("SIGHUP: geogate has no reload; draining and stopping as on SIGTERM")
    os.kill(os.getpid(), signal.SIGTERM)


def _route(
    config: Config,
    geo: GeoSource,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    model: str | None,
) -> dict[str, Any]:
    """The offline routing view: the runtime's own locate-and-route, on a fresh in-memory
    store (no probes ran, so every configured upstream counts as healthy)."""
    import random

    from gateway.fleet.memory import MemoryStateStore
    from gateway.runtime import Runtime

    rt = Runtime.build(config, MemoryStateStore(config), geo)
    rt.rng = random.Random(0)
    name = model or (config.upstreams[0].models[0] if config.upstreams else "")
    decision = rt.route_ip(ip, False, name, 0.0).decision
    chosen = decision.chosen
    return {
        "model": name,
        "region": chosen.upstream.region if chosen else None,
        "upstream": chosen.upstream.id if chosen else None,
        "header": decision.header(),
        "note": (
            "offline view: every configured upstream healthy and idle, RTTs from the distance "
            "model; a running gateway's /explain uses what it measured"
        ),
        "decision": decision.explain(),
    }


def lookup(args: argparse.Namespace) -> None:
    from gateway.runtime import default_location, open_geo

    try:
        ip = parse_ip(args.ip)
    except ValueError:
        raise CLIError(f"{args.ip!r} is not an IP address") from None
    if args.model is not None and not args.config:
        # The route, the only thing the model changes, comes from the config's upstreams:
        # without one the flag would be silently ignored.
        raise CLIError("--model needs --config FILE (the model is routed with its upstreams)")
    config: Config | None = load_config(args.config) if args.config else None
    if args.db:
        fallback = default_location(config) if config else Location(0.0, 0.0)
        geo: GeoSource = GeoIPSource(args.db, fallback)
    elif config:
        geo = open_geo(config)
    else:
        raise CLIError("give --db PATH or --config FILE (whose geoip.database is used)")
    loc = geo.locate(ip)
    out: dict[str, object] = {"ip": str(ip), "location": loc.as_dict()}
    if config:
        out["route"] = _route(config, geo, ip, args.model)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"{ip}: {loc.describe()}"
        + (f", accuracy {loc.accuracy_km:g} km" if loc.accuracy_km else "")
    )
    if "route" in out:
        r = out["route"]
        assert isinstance(r, dict)
        if r["region"]:
            print(
                f"routes to: region {r['region']} (upstream {r['upstream']}) for model "
                f"{r['model']!r} — {r['header']}"
            )
        else:
            print(f"routes to: nothing for model {r['model']!r} ({r['header']})")
        print(f"  ({r['note']})")


def build(args: argparse.Namespace) -> None:
    from geodb.build import build_from_csv

    n = build_from_csv(args.csv, args.out)
    print(f"wrote {args.out} with {n} network(s)")
