"""``geogate ctl``: operate a fleet — show and change its routing config, drain and undrain a
region or an upstream, set a weight, read the audit trail, watch it live (``top``).

Through a gateway's admin API (``--gateway URL --token T``: the audit names the operator the
token belongs to) or straight to Redis (``--redis URL``: no gateway needed; ``--who`` names
the operator). ``ctl_fleet`` has the two; ``top`` the live view.

A change through a gateway first asks it what the change would move (the dashboard's impact
API: the router itself, on the last minute's traffic) and says so; one that would leave
clients with no upstream at all (a residency rule, say: 503 for them) is made only with
``--yes``. Without that answer (``--redis``, or a gateway that cannot say), ctl says nothing
about where the clients go: only the router knows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway import checks
from gateway.cli.ctl_fleet import (
    GATEWAY_ENV,
    NOWHERE,
    OPS_TOKEN_ENV,
    TOKEN_ENV,
    Fleet,
    GatewayFleet,
    RedisFleet,
)
from gateway.cli.errors import CLIError
from gateway.errors import FleetConfigInvalid
from gateway.fleet import config_doc


def _from_env(args: argparse.Namespace) -> None:
    """Options not given come from GEOGATE_CTL_*; an explicit --redis wins over a gateway
    named only in the environment."""
    env = os.environ.get
    if args.gateway is None and not args.redis:
        args.gateway = env(GATEWAY_ENV)
    if args.token is None:
        args.token = env(TOKEN_ENV)
    if args.ops_token is None:
        args.ops_token = env(OPS_TOKEN_ENV)


def _open(args: argparse.Namespace) -> Fleet:
    _from_env(args)
    if args.gateway and args.redis:
        raise CLIError("give --gateway URL or --redis URL, not both")
    if args.ctl_command == "top" and not args.gateway:
        raise CLIError(
            "top shows a gateway's live view: give --gateway URL (its ops listener, such as "
            "http://127.0.0.1:9180)"
        )
    if args.gateway:
        if getattr(args, "who", None):
            raise CLIError("--who is for --redis; through a gateway, your --token names you")
        if args.restart_grace is not None:
            raise CLIError("--restart-grace is for --redis; a gateway knows its own")
        return GatewayFleet(args.gateway, args.token, args.ops_token)
    if args.redis:
        who = getattr(args, "who", None)
        if who is not None:  # the audit's name: one that spanned lines forged another's row
            try:
                checks.operator_name(who)
            except ValueError as exc:
                raise CLIError(f"--who: {exc}") from None
        try:  # as redis.deployment is: "a b" was looked for in Redis, and said to be no fleet
            checks.deployment(args.deployment)
        except ValueError as exc:
            raise CLIError(f"--deployment: {exc}") from None
        return RedisFleet(args.redis, args.deployment, who, args.restart_grace)
    raise CLIError(
        "give --gateway URL (a gateway's ops listener, with your --token) or --redis URL"
    )


async def show(fleet: Fleet, args: argparse.Namespace) -> None:
    doc, version = await fleet.config()
    print(json.dumps({"version": version, **doc}, indent=2))
    if refused := getattr(fleet, "refused", None):
        print(
            f"note: the gateway ignores the fleet's document in Redis ({refused}) and routes "
            f"on this one, version {version}; `geogate ctl restore` puts this one back",
            file=sys.stderr,
        )
    if stale := getattr(fleet, "stale_since", None):
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stale))
        if version == 0:
            # Version 0 is a gateway's own file before any sync (gateway.fleet.redis_store):
            # "last snapshot" had the operator take it for the fleet's, drains and all.
            print(
                f"note: this is the gateway's own config file, not the fleet's document: its "
                f"shared state (Redis) has been unreachable since {when} and it has not been "
                "in sync since it started, so the fleet's drains and weights are not in it",
                file=sys.stderr,
            )
            return
        print(
            f"note: this is the gateway's last snapshot: its shared state (Redis) has been "
            f"unreachable since {when}, and the fleet's document may have changed since",
            file=sys.stderr,
        )


async def restore(fleet: Fleet, args: argparse.Namespace) -> None:
    entry = await fleet.restore()
    print(f"{entry['what']} (fleet config version {entry['version']}, audited as {entry['who']})")


async def audit(fleet: Fleet, args: argparse.Namespace) -> None:
    rows = await fleet.audit(args.count)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        # On stderr: stdout stays what a script parses (nothing), the operator reads why.
        print(
            "no operator changes recorded: none made since the fleet started, or Redis lost "
            "them (the audit lives in Redis only: give it persistence, appendonly)",
            file=sys.stderr,
        )
    for row in rows:
        # Escaped: an entry written by another tool (or an earlier ctl) may hold a line break
        # that would print as a row of its own.
        when, version, who, what, before, after = (
            _shown(str(row.get(k, "?")))
            for k in ("when", "version", "who", "what", "before", "after")
        )
        print(f"{when}  v{version:<4} {who:<12} {what}: {before} -> {after}")


def _shown(text: str) -> str:
    """``text`` with its control characters escaped, one line whatever it holds."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


async def set_upstream(fleet: Fleet, args: argparse.Namespace) -> None:
    changes = {
        k: v
        for k, v in (("weight", args.weight), ("bias_ms", args.bias_ms), ("drained", args.drained))
        if v is not None
    }
    if not changes:
        raise CLIError("say what to change: --weight W, --bias-ms MS, --drain or --undrain")
    said = await _impact_first(fleet, args, "upstream", args.upstream, changes)
    if _told(args.upstream, await fleet.change("upstream", args.upstream, changes)):
        _say(said)


async def weight(fleet: Fleet, args: argparse.Namespace) -> None:
    doc, _ = await fleet.config()
    if _kind(doc, args.upstream) != "upstream":
        raise CLIError(f"{args.upstream!r} is a region: a weight belongs to one upstream")
    changes = {"weight": args.weight}
    said = await _impact_first(fleet, args, "upstream", args.upstream, changes, doc)
    if _told(args.upstream, await fleet.change("upstream", args.upstream, changes, doc)):
        _say(said)


async def drain(fleet: Fleet, args: argparse.Namespace) -> None:
    drained = args.ctl_command == "drain"
    doc, _ = await fleet.config()
    kind = _kind(doc, args.target)
    said = await _impact_first(fleet, args, kind, args.target, {"drained": drained}, doc)
    entry = await fleet.change(kind, args.target, {"drained": drained}, doc)
    if config_doc.is_unchanged(entry):
        state = "drained" if drained else "not drained"
        print(f"{kind} {args.target}: already {state}; nothing changed ({_same(entry)})")
        if not drained and kind == "upstream" and (held := _held_by(doc, args.target)):
            print(f"its region {held} is drained: `ctl undrain {held}` brings it back")
        return
    by = f"fleet config version {entry['version']}, audited as {entry['who']}"
    # Where the clients go is the router's to say (policy, residency, health): said below when
    # the gateway could tell, never guessed here.
    if kind == "region":
        print(_region_told(args.target, drained, json.loads(entry["after"]), by))
    elif drained:
        print(f"upstream {args.target} drained: no new requests, those in flight finish ({by})")
    elif held := _held_by(doc, args.target):
        # The upstream's own flag is cleared, yet its region's drain still keeps it out: saying
        # "back in rotation" would send the operator looking for traffic that cannot come.
        print(
            f"upstream {args.target} undrained, but its region {held} is drained: it takes no "
            f"requests until `ctl undrain {held}` ({by})"
        )
    else:
        print(f"upstream {args.target} undrained: back in rotation ({by})")
    _say(said)


def _region_told(rid: str, drained: bool, after: dict[str, Any], by: str) -> str:
    """What a region's drain or undrain did to each upstream: the audit's ``after`` holds each
    one's effective drain, so an upstream drained on its own shows there as still drained."""
    if drained:
        take = "takes" if len(after) == 1 else "take"
        return (
            f"region {rid} drained: {', '.join(after)} {take} no new requests, requests in "
            f"flight finish ({by})"
        )
    back = [uid for uid, state in after.items() if not state.get("drained")]
    held = [uid for uid in after if uid not in back]
    said = [f"{', '.join(back)} back in rotation" if back else "no upstream back in rotation"]
    if held:
        stay, own = ("stays", "its") if len(held) == 1 else ("stay", "their")
        fix = ", ".join(f"ctl undrain {uid}" for uid in held)
        said.append(f"{', '.join(held)} {stay} drained (drained on {own} own: {fix})")
    return f"region {rid} undrained: {'; '.join(said)} ({by})"


def _held_by(doc: dict[str, Any], uid: str) -> str | None:
    """The region, as of ``doc``, whose drain (drained_regions) holds upstream ``uid`` out,
    if any."""
    region = next((u.get("region") for u in doc.get("upstreams", []) if u["id"] == uid), None)
    return str(region) if region in doc.get("drained_regions", {}) else None


async def _impact_first(
    fleet: Fleet,
    args: argparse.Namespace,
    kind: str,
    target: str,
    changes: dict[str, Any],
    doc: dict[str, Any] | None = None,
) -> str | None:
    """The gateway's word on what the change would move, asked before it is made; a change
    that leaves some clients with no upstream at all (503), by the last minute's traffic or
    by what the change leaves of a model's upstreams (``stranded``: every worker's clients,
    not only the answering worker's traffic), is refused without --yes, as that is an outage
    for them, not a move."""
    impact = await fleet.impact(kind, target, changes) or await _by_document(
        fleet, kind, target, changes, doc
    )
    if impact is None:
        return None
    text = str(impact["text"])
    try:
        nowhere = float(impact["arriving"].get(NOWHERE, 0.0))
    except (TypeError, ValueError):
        nowhere = 0.0
    if (nowhere > 0 or impact.get("stranded")) and not args.yes:
        raise CLIError(
            f"not applied: {text.rstrip('.')}; pass --yes to {_verb(args, target)} anyway"
        )
    return text


async def _by_document(
    fleet: Fleet, kind: str, target: str, changes: dict[str, Any], doc: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Where no gateway says (``--redis``, or one that could not answer): what the fleet's
    document alone says the change strands, drains without health or traffic. None when it
    strands nothing, or when the change is one the store will refuse with its own words.
    ``doc``: the document the caller read already, if it did."""
    if doc is None:
        doc, _ = await fleet.config()
    change = config_doc.change_region if kind == "region" else config_doc.change_upstream
    try:
        after, _, _ = change(doc, target, changes)  # a new document; doc stays as it was
    except FleetConfigInvalid:
        return None
    lost = config_doc.stranded(doc, after)
    if not lost:
        return None
    text = f"{BY_DOCUMENT}, it leaves NO upstream for {'; '.join(lost)}: their requests get 503"
    return {"text": text, "arriving": {}, "stranded": lost}


def _verb(args: argparse.Namespace, target: str) -> str:
    if args.ctl_command in ("drain", "undrain"):
        return f"{args.ctl_command} {target}"
    if args.ctl_command == "weight":
        return f"set {target}'s weight to {args.weight:g}"
    return f"change {target}"


BY_DOCUMENT = "by the fleet's document (no gateway said)"


def _say(said: str | None) -> None:
    if said:  # the router's words, or the document's alone (nothing was routed to say it)
        how = "" if said.startswith(BY_DOCUMENT) else ", as routed just before the change"
        print(f"impact{how}: {said}")


def _kind(doc: dict[str, Any], name: str) -> str:
    """Whether ``name`` is a region or an upstream of the fleet document."""
    regions = [r["id"] for r in doc.get("regions", [])]
    upstreams = [u["id"] for u in doc.get("upstreams", [])]
    if name in regions and name in upstreams:
        raise CLIError(
            f"{name!r} is both a region and an upstream; rename one (ids are what ctl takes)"
        )
    if name in regions:
        return "region"
    if name in upstreams:
        return "upstream"
    raise CLIError(
        f"no region or upstream {name!r}; regions: {', '.join(regions) or 'none'}; "
        f"upstreams: {', '.join(upstreams) or 'none'}"
    )


def _same(entry: dict[str, Any]) -> str:
    return f"fleet config version {entry['version']} unchanged, nothing audited"


def _told(uid: str, entry: dict[str, Any]) -> bool:
    """Says what a change did; False when it changed nothing (then no impact to say)."""
    if config_doc.is_unchanged(entry):
        print(f"upstream {uid}: already {entry['after']}; nothing changed ({_same(entry)})")
        return False
    print(
        f"upstream {uid}: {entry['before']} -> {entry['after']} "
        f"(fleet config version {entry['version']}, audited as {entry['who']})"
    )
    return True


async def top(fleet: Fleet, args: argparse.Namespace) -> None:
    from gateway.cli.top import run_top

    assert isinstance(fleet, GatewayFleet)
    await run_top(fleet, once=args.once, interval_s=args.interval)


COMMANDS: dict[str, Callable[[Fleet, argparse.Namespace], Awaitable[None]]] = {
    "show": show,
    "audit": audit,
    "set": set_upstream,
    "weight": weight,
    "drain": drain,
    "undrain": drain,
    "top": top,
    "restore": restore,
}


async def _ctl(args: argparse.Namespace) -> None:
    fleet = _open(args)
    try:
        await COMMANDS[args.ctl_command](fleet, args)
    finally:
        await fleet.close()


def run_ctl(args: argparse.Namespace) -> None:
    asyncio.run(_ctl(args))
