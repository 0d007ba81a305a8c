"""README's "What it costs" table, from a price list: `python deploy/cost.py` prints it.

No command here can read AWS's prices (no network, and AWS's pages are not an API we use):
PRICES are list prices copied by hand, each with where it came from and how old it is, and
this script only multiplies and adds. Change a price or a quantity below, run it, and paste
its table into README.md; tests/deploy/test_cost.py checks the two agree."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple, NoReturn


class Price(NamedTuple):
    usd: float
    unit: str
    source: str


# The user's notes: one g5.xlarge in Singapore (ap-southeast-1), undated; used for all three
# regions (Frankfurt's g5 costs more: put in yours). The rest: AWS's published on-demand list
# prices as written down here, undated and mostly us-east-1's, except the NAT gateway's
# (Singapore's, from a 2026 summary of AWS's VPC pricing); none re-read on AWS's pages.
NOTES = "user's notes, Singapore, undated"
LIST = "AWS list price, undated, not re-checked"
NAT = "AWS list price, Singapore, 2026 summary, not re-checked"
PRICES = {
    "g5.xlarge": Price(1.006, "h", NOTES),
    "gp3": Price(0.09, "GB-month", NOTES),
    "egress": Price(0.09, "GB", NOTES),
    "alb": Price(0.0225, "h", LIST),
    "alb_lcu": Price(0.008, "LCU-hour", LIST),
    "cache.r7g.large": Price(0.22, "h", LIST),
    "nat_gateway": Price(0.059, "h", NAT),
    "nat_processing": Price(0.059, "GB", NAT),
    "inter_region": Price(0.02, "GB", LIST + ", out of eu-central-1"),
    # Detailed monitoring is billed as CloudWatch metrics: 7 an instance.
    "cloudwatch_metric": Price(0.30, "metric-month", LIST),
    "route53_zone": Price(0.50, "month", LIST),
    # A health check of an AWS endpoint (the ALB, same account), and each optional feature
    # (HTTPS, the 10 s "fast" interval that `geogate dns export` asks for) billed apart.
    "route53_check": Price(0.50, "month", LIST),
    "route53_check_feature": Price(1.00, "month", LIST),
    "route53_geo_queries": Price(0.70, "million", LIST),
}

X = "\N{MULTIPLICATION SIGN}"  # as README's tables write it
HOURS = 730  # a month
REGIONS = 3  # eu-central-1, us-east-1, ap-southeast-1
HOSTS = 3  # one g5.xlarge a region
VOLUME_GB = 500  # root_volume_gb
EGRESS_GB = 3000  # 1 TB a region
REDIS_NODES = 6  # two a region (two zones)
NAT_GATEWAYS = 3  # one a region; one per zone doubles it
# Each boot copies the model and pulls the backend image: through the NAT gateway (no S3 or
# ECR endpoint in the VPC), and across regions for the two regions that are not the bucket's
# and the registry's (the example's model_s3_uri and images are one bucket, one registry).
BOOTS = 3  # a month: one a host (a monthly refresh); each scale-out or replacement adds one
REMOTE_BOOTS = 2
MODEL_GB = 16  # an 8B model in bf16
BACKEND_IMAGE_GB = 8  # an estimate (CUDA runtime + torch): `docker image ls` says yours
METRICS_PER_INSTANCE = 7
HEALTH_CHECKS = 3  # one a region, HTTPS on /readyz every 10 s
CHECK_FEATURES = 2  # HTTPS, fast interval


class Row(NamedTuple):
    item: str
    quantity: str
    unit_price: str
    usd: float  # a month
    extra: str = ""  # what comes on top, per traffic


def _p(key: str) -> float:
    return PRICES[key].usd


def rows() -> list[Row]:
    boot_gb = MODEL_GB + BACKEND_IMAGE_GB
    check = _p("route53_check") + CHECK_FEATURES * _p("route53_check_feature")
    return [
        Row(
            "g5.xlarge (1x A10G)",
            f"{HOSTS} {X} {HOURS} h = {HOSTS * HOURS:,} instance-hours",
            f"${_p('g5.xlarge')}/h",
            HOSTS * HOURS * _p("g5.xlarge"),
        ),
        Row(
            "gp3 root volumes",
            f"{HOSTS} {X} {VOLUME_GB} GB",
            f"${_p('gp3')}/GB-month",
            HOSTS * VOLUME_GB * _p("gp3"),
        ),
        Row(
            "data transfer out",
            f"{EGRESS_GB // 1000} TB (1 TB a region)",
            f"${_p('egress')}/GB",
            EGRESS_GB * _p("egress"),
        ),
        Row(
            "ALB",
            f"{REGIONS} {X} {HOURS} h (+ LCUs, per traffic)",
            f"${_p('alb')}/h + ${_p('alb_lcu')}/LCU-hour",
            REGIONS * HOURS * _p("alb"),
            "LCUs",
        ),
        Row(
            "ElastiCache, Global Datastore",
            f"{REDIS_NODES} nodes (2 a region) {X} {HOURS} h",
            f"cache.r7g.large ${_p('cache.r7g.large')}/h",
            REDIS_NODES * HOURS * _p("cache.r7g.large"),
        ),
        Row(
            "NAT gateways",
            f"{NAT_GATEWAYS} (one a region) {X} {HOURS} h",
            f"${_p('nat_gateway')}/h",
            NAT_GATEWAYS * HOURS * _p("nat_gateway"),
        ),
        Row(
            "NAT data processing",
            f"{BOOTS} boots {X} {boot_gb} GB (model {MODEL_GB} GB, backend image ≈ "
            f"{BACKEND_IMAGE_GB} GB)",
            f"${_p('nat_processing')}/GB",
            BOOTS * boot_gb * _p("nat_processing"),
        ),
        Row(
            "inter-region transfer at boot",
            f"{REMOTE_BOOTS} boots {X} {boot_gb} GB (two regions pull from the third's S3 and ECR)",
            f"${_p('inter_region')}/GB",
            REMOTE_BOOTS * boot_gb * _p("inter_region"),
        ),
        Row(
            "EC2 detailed monitoring",
            f"{HOSTS} instances {X} {METRICS_PER_INSTANCE} metrics",
            f"${_p('cloudwatch_metric'):.2f}/metric-month",
            HOSTS * METRICS_PER_INSTANCE * _p("cloudwatch_metric"),
        ),
        Row("Route 53 hosted zone", "1", f"${_p('route53_zone'):.2f}", _p("route53_zone")),
        Row(
            "Route 53 health checks",
            f"{HEALTH_CHECKS} (HTTPS, 10 s interval)",
            f"${_p('route53_check'):.2f} + ${_p('route53_check_feature'):.2f} HTTPS"
            f" + ${_p('route53_check_feature'):.2f} fast interval",
            HEALTH_CHECKS * check,
        ),
        Row(
            "Route 53 geolocation queries",
            "per traffic",
            f"${_p('route53_geo_queries'):.2f}/million",
            0.0,
            "queries",
        ),
    ]


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x < 10 else f"${x:,.0f}"


def table() -> str:
    lines = ["| item | quantity | unit price | per month |", "|---|---|---|---|"]
    for r in rows():
        month = " + ".join(s for s in (_usd(r.usd) if r.usd else "", r.extra) if s)
        lines.append(f"| {r.item} | {r.quantity} | {r.unit_price} | {month} |")
    extras = " and ".join(r.extra for r in rows() if r.extra)
    lines.append(f"| **total** | | | **{_usd(sum(r.usd for r in rows()))} + {extras}** |")
    return "\n".join(lines)


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line, exit status 2 (as geogate's own commands, backend.cli's
    OneLineParser; not imported: this script runs without the repository on sys.path)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> None:
    """It takes no arguments: each used to be ignored, --help included, and the table printed
    with exit status 0 as if it had been understood."""
    parser = _OneLineParser(
        prog="deploy/cost.py",
        description='Print README\'s "What it costs" table (markdown) from the hand-copied '
        "price list in this file. It takes no arguments: change a price or a quantity here.",
    )
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        print(table(), flush=True)  # flushed here, so that a closed pipe is caught below
    except OSError as exc:
        # Output still buffered goes to /dev/null, or flushing it at exit raises again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(exc, BrokenPipeError):  # the reader stopped (| head): as SIGPIPE would
            sys.exit(128 + 13)
        print(f"deploy/cost.py: cannot write the table: {exc.strerror}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
