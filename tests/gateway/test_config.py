from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest

from gateway import defaults
from gateway.cli import commands
from gateway.cli.errors import CLIError
from gateway.config_file import load_config
from gateway.errors import ConfigError
from tests.support import self_signed_cert

GOOD = """
[gateway]
region = "eu-central"
[[regions]]
id = "eu-central"
latitude = 50.11
longitude = 8.68
[[upstreams]]
id = "eu-1"
region = "eu-central"
url = "http://127.0.0.1:9000"
models = ["m"]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gw.toml"
    p.write_text(text)
    return p


def test_an_upstream_on_the_gateways_port_elsewhere_is_no_loop(tmp_path: Path) -> None:
    # Another host on the same port (a gateway-to-gateway leg), this host's other ports.
    for url in ("http://eu.gw.example:8080", "http://127.0.0.1:8081", "https://127.0.0.1"):
        text = GOOD.replace("http://127.0.0.1:9000", url)
        assert load_config(write(tmp_path, text), env={}).upstreams[0].url == url


def test_defaults_are_the_named_ones(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={})
    assert cfg.timeouts.first_byte_s == defaults.FIRST_BYTE_TIMEOUT_S
    assert cfg.retry.max_attempts == defaults.MAX_ATTEMPTS
    assert cfg.router.panic_threshold == defaults.PANIC_THRESHOLD
    assert cfg.server.max_body_bytes == defaults.MAX_BODY_BYTES
    assert cfg.gateway.origin == "self"


def test_example_config_in_the_repo_is_valid() -> None:
    cfg = load_config(Path(__file__).parents[2] / "examples" / "gateway.toml", env={})
    assert len(cfg.regions) >= 3 and cfg.upstreams


def test_drained_regions_map_a_drained_region_to_its_upstreams_drained_on_their_own(
    tmp_path: Path,
) -> None:
    assert load_config(write(tmp_path, GOOD), env={}).drained_regions == {}
    text = 'drained_regions = {eu-central = ["eu-1"]}\n' + GOOD
    assert load_config(write(tmp_path, text), env={}).drained_regions == {"eu-central": ("eu-1",)}


def test_env_overrides(tmp_path: Path) -> None:
    env = {
        "GEOGATE_SERVER__PORT": "9999",
        "GEOGATE_TIMEOUTS__CONNECT_S": "0.5",
        "GEOGATE_GATEWAY__TRUSTED_PROXIES": '["10.0.0.0/8"]',
        "OTHER": "x",
        "GEOGATE_CTL_TOKEN": "x",  # geogate ctl's, in the operator's shell: not an override
    }
    cfg = load_config(write(tmp_path, GOOD), env=env)
    assert (cfg.server.port, cfg.timeouts.connect_s) == (9999, 0.5)
    assert cfg.gateway.trusted_proxies == ("10.0.0.0/8",)


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda t: t.replace("50.11", "150.11"), "regions[0].latitude"),
        (
            lambda t: t.replace('url = "http://127.0.0.1:9000"', 'url = "ftp://x"'),
            "upstreams[0].url",
        ),
        (lambda t: t + "[timeouts]\nconect_s = 1\n", "timeouts.conect_s: unknown key"),
        (lambda t: t + "[timeouts]\nconnect_s = -1\n", "timeouts.connect_s"),
        (
            lambda t: t.replace('region = "eu-central"\n[[', 'region = "mars"\n[[', 1),
            "gateway.region 'mars'",
        ),
        (
            lambda t: t.replace('region = "eu-central"\nurl', 'region = "x"\nurl'),
            "'x' is not defined",
        ),
        (lambda t: t + "[[residency]]\nregions = ['eu-central']\n", "countries or continents"),
        (lambda t: t + "[[residency]]\ncountries=['DE']\nregions = ['nope']\n", "'nope'"),
        (lambda t: t.replace("[gateway]", "[gateway\n"), "invalid TOML"),
        (lambda t: t + t.split("[[upstreams]]")[1].join(["[[upstreams]]", ""]), "appears twice"),
        (
            lambda t: t.replace("[gateway]\n", '[gateway]\ntrusted_proxies = ["10.0.0.0/33"]\n'),
            "gateway.trusted_proxies[0]: not an address or network (a CIDR such as "
            "10.0.0.0/8) (got '10.0.0.0/33')",
        ),
        (
            lambda t: t.replace(":9000", ":9000/v1"),
            "upstreams[0].url: ends in /v1: give the server's root",
        ),
        (lambda t: t.replace(":9000", ":9000/v1/"), "upstreams[0].url: ends in /v1"),
        (lambda t: t + "weight = nan\n", "upstreams[0].weight"),
        (lambda t: t + "bias_ms = inf\n", "upstreams[0].bias_ms"),
        (lambda t: t + "weight = 1001\n", "upstreams[0].weight: Input should be less than"),
        (lambda t: t + "bias_ms = -10001\n", "upstreams[0].bias_ms"),
        (lambda t: t + "[timeouts]\ntotal_s = inf\n", "timeouts.total_s"),
        (lambda t: t + '[redis]\nurl = "http://127.0.0.1:6379"\n', "redis.url: http://"),
        (lambda t: t + '[redis]\nurl = "redis://127.0.0.1:63x9"\n', "bad host:port"),
        (lambda t: t + '[redis]\nurl = "redis+sentinel://127.0.0.1:1"\n', "/master-name"),
        (lambda t: t + '[server]\ntls_cert = "no.pem"\ntls_key = "no.key"\n', "server.tls_cert"),
        (lambda t: t + '[server]\nextra_api_paths = ["/v1/../sleep"]\n', "extra_api_paths[0]"),
        (lambda t: t + "[server]\nhead_timeout_s = 0\n", "server.head_timeout_s"),
        (lambda t: t + '[server]\nengine = "gunicorn"\n', "server.engine: Input should be"),
        (lambda t: t + '[admin]\ntokens = {alice = "t", bob = "t"}\n', "share a name or a token"),
        (lambda t: t + '[admin]\ntoken = "t"\ntokens = {admin = "u"}\n', "share a name or a token"),
        (lambda t: t + '[admin]\ntokens = {"a b" = "t"}\n', "admin.tokens"),
        (lambda t: t + '[log]\nformat = "json"\n', "log.format: Input should be 'text' or 'ecs'"),
        (lambda t: t + "[log]\nmax_repeats = -1\n", "log.max_repeats: Input should be greater"),
        # The dashboard's origin behind a proxy: scheme and host only.
        (lambda t: t + '[ops]\npublic_url = "ops.example.com"\n', "ops.public_url"),
        (lambda t: t + '[ops]\npublic_url = "https://x/dashboard"\n', "ops.public_url"),
        (  # two rules of one name: which applied could not be told
            lambda t: (
                t
                + '[[residency]]\nname = "eu"\ncontinents = ["EU"]\nregions = ["eu-central"]\n'
                + '[[residency]]\nname = "eu"\ncountries = ["GB"]\nregions = ["eu-central"]\n'
            ),
            "residency[1]: name 'eu' is another rule's too",
        ),
        (  # passed: no browser's Origin could ever match it
            lambda t: t + '[ops]\npublic_url = "https://ops.example.com:99999"\n',
            "ops.public_url: port must be a number from 1 to 65535",
        ),
        (
            lambda t: t.replace("8.68\n", '8.68\naddresses = ["127.0.0.11", "127.0.0.300"]\n'),
            "regions[0].addresses[1]: '127.0.0.300' is not an IP address",
        ),
        (  # PowerDNS answered SERVFAIL for a scoped one; 0.0.0.0 was answered to clients
            lambda t: t.replace("8.68\n", '8.68\naddresses = ["192.0.2.1", "fe80::1%eth0"]\n'),
            "regions[0].addresses[1]: 'fe80::1%eth0' has a zone (%eth0): give the address alone",
        ),
        (
            lambda t: t.replace("8.68\n", '8.68\naddresses = ["0.0.0.0"]\n'),
            "regions[0].addresses[0]: '0.0.0.0' is no address a client could reach",
        ),
        (  # an AAAA record no IPv6-only client reaches, beside its own IPv4 form
            lambda t: t.replace("8.68\n", '8.68\naddresses = ["::ffff:192.0.2.10"]\n'),
            "regions[0].addresses[0]: '::ffff:192.0.2.10' is an IPv4-mapped IPv6 address: give "
            "the IPv4 address '192.0.2.10'",
        ),
        *(  # answered to clients by GeoDNS, which no client could connect to
            (
                lambda t, a=address: t.replace("8.68\n", f'8.68\naddresses = ["{a}"]\n'),
                f"regions[0].addresses[0]: '{address}' is {what} address, which no client",
            )
            for address, what in (
                ("255.255.255.255", "the broadcast"),
                ("224.0.0.1", "a multicast"),
                ("ff02::1", "a multicast"),
                ("240.0.0.1", "a reserved (240.0.0.0/4)"),
                ("169.254.0.10", "a link-local"),
                ("fe80::10", "a link-local"),
            )
        ),
        # Residency that GeoIP could never match: the rule would silently not apply.
        (
            lambda t: t + "[[residency]]\ncountries = ['DE', 'UK']\nregions = ['eu-central']\n",
            "residency[0].countries[1]: not an ISO 3166-1 alpha-2 country code; use GB (got 'UK')",
        ),
        # A name with a line break passed --check, then every request the rule covered was a
        # 500 (the geogate-route header); one with ";" read as another of its fields.
        *(
            (
                lambda t, n=name: (
                    t + f"[[residency]]\nname = {n}\ncountries = ['DE']\nregions = ['eu-central']\n"
                ),
                "residency[0].name: a residency rule's name is 1-64 printable ASCII characters",
            )
            for name in (  # as TOML writes them: a basic string's \r\n is CR LF
                '"a\\r\\nx-injected: yes"',
                '"eu; upstream=x"',
                f'"{"x" * 65}"',
                '" eu"',
                '"eu "',
                '"Österreich"',
                '"eu=1"',
            )
        ),
        (
            lambda t: t + "[[residency]]\ncountries = ['Germany']\nregions = ['eu-central']\n",
            "residency[0].countries[0]: not an ISO 3166-1 alpha-2 country code; use DE",
        ),
        (
            lambda t: t + "[[residency]]\ncountries = ['ZZ']\nregions = ['eu-central']\n",
            "country code (such as DE, GB, US) (got 'ZZ')",
        ),
        (
            lambda t: t + "[[residency]]\ncontinents = ['Europe']\nregions = ['eu-central']\n",
            "residency[0].continents[0]: not a continent code; use EU: one of AF (Africa)",
        ),
        (lambda t: t + "[geoip.default]\ncountry = 'EN'\n", "geoip.default.country: not an ISO"),
        (lambda t: t + "[geoip.default]\ncontinent = 'XX'\n", "geoip.default.continent: not a"),
        # Paths appended to an upstream's URL: "http://host:9000" + "health" has no port.
        (lambda t: t + 'health_path = "health"\n', 'upstreams[0].health_path: must start with "/"'),
        (lambda t: t + '[load]\npath = "metrics"\n', 'load.path: must start with "/"'),
        # ... and with a line break, a broken request line: it passed --check, then the
        # gateway stopped at start with a traceback
        (
            lambda t: t + 'health_path = "/health\\n"\n',
            "upstreams[0].health_path: it has a space, control character or #",
        ),
        (
            lambda t: t + 'load_path = "/lo ad"\n',
            "load_path '/lo ad': it has a space, control character or #",
        ),
        (lambda t: t + '[load]\npath = "/m#x"\n', "load.path: it has a space, control"),
        (
            lambda t: t + '[health]\ncompletion_probe_path = "/v1/chat\\r\\nX: 1"\n',
            "health.completion_probe_path: it has a space, control character or #",
        ),
        (
            lambda t: t + "[load]\npoll_interval_s = 5\n",
            "load: max_age_s (2) must be longer than poll_interval_s (5)",
        ),
        (
            lambda t: t + "[redis]\nrestart_grace_s = -1\n",
            "redis.restart_grace_s: Input should be greater than or equal to 0 (got -1)",
        ),
        (
            lambda t: t + "[redis]\nrestart_grace_s = nan\n",
            "redis.restart_grace_s: Input should be a finite number (got nan)",
        ),
        (
            lambda t: t + "[redis]\nrefresh_interval_s = 3\n",
            "redis: observation_ttl_s (5) must be at least 2 x refresh_interval_s (3)",
        ),
        (
            lambda t: t + "[outlier]\nbase_ejection_s = 400\n",
            "outlier: base_ejection_s (400) is over max_ejection_s (300)",
        ),
        (
            lambda t: t + '[discovery]\nnameservers = ["dns.internal"]\n',
            "discovery.nameservers[0]: not an IP address with an optional port",
        ),
        (lambda t: t + '[discovery]\nnameservers = ["192.0.2.53:99999"]\n', "nameservers[0]"),
        (lambda t: t + '[discovery]\nnameservers = ["[::1]x"]\n', "nameservers[0]"),
        (lambda t: t + '[discovery]\nnameservers = ["192.0.2.53:"]\n', "nameservers[0]"),
        (
            lambda t: t + '[server]\nworkers = 2\n[admin]\ntoken = "t"\n',
            "server.workers = 2 with the admin API on needs redis.url",
        ),
        (
            lambda t: t + '[server]\nworkers = 4\nengine = "hypercorn"\n',
            'server.workers = 4 with server.engine = "hypercorn": hypercorn runs one worker here',
        ),
        # An upstream's URL the gateway could not dial: said at load, not a traceback at start.
        (
            lambda t: t.replace(":9000", ":99999"),
            "upstreams[0].url: port must be a number from 1 to 65535 (got "
            "'http://127.0.0.1:99999')",
        ),
        (lambda t: t.replace(":9000", ":abc"), "upstreams[0].url: port must be a number"),
        (lambda t: t.replace(":9000", ":9000\\r\\nX: y"), "upstreams[0].url: it has a space"),
        (lambda t: t.replace(":9000", ":9000/a b"), "upstreams[0].url: it has a space"),
        (lambda t: t.replace(":9000", ":9000/?key=x"), "upstreams[0].url: it has a query"),
        (lambda t: t.replace(":9000", ":9000#x"), "upstreams[0].url: it has a query"),
        (
            lambda t: t.replace('"http://127', '"HTTP://127'),
            "use http:// or https:// in lower case (got 'HTTP://127.0.0.1:9000')",
        ),
        (lambda t: t.replace("127.0.0.1:9000", "[::1:9000"), "upstreams[0].url: not a valid"),
        (
            lambda t: t.replace("127.0.0.1:9000", "u:hunter2@[x]:1"),
            "upstreams[0].url: not a valid host (an IPv6 address goes in brackets: [::1]:8000) "
            "(got 'http://u:****@[x]:1')",
        ),
        # A listener on every interface is said as such, never an empty value.
        (lambda t: t + '[server]\nhost = ""\n', "server.host: empty: use 0.0.0.0 to listen"),
        (lambda t: t + '[ops]\nhost = ""\n', "ops.host: empty: use 0.0.0.0 to listen"),
        # A region's URL is checked at load, not by geogate dns export's traceback.
        (
            lambda t: t.replace("8.68\n", '8.68\nurl = "not a url"\n'),
            "regions[0].url: use http:// or https://",
        ),
        (
            lambda t: t.replace("8.68\n", '8.68\nurl = "https://eu.example.com:99999/x"\n'),
            "regions[0].url: port must be a number from 1 to 65535",
        ),
        # TOML's true is no number (pydantic's lax mode would take it as 1).
        (lambda t: t + "[server]\nport = true\n", "server.port: a number, not true or false"),
        (lambda t: t + "[server]\nmax_body_bytes = true\n", "server.max_body_bytes: a number"),
        (lambda t: t + "weight = true\n", "upstreams[0].weight: a number, not true or false"),
        (lambda t: t + "[timeouts]\nconnect_s = false\n", "timeouts.connect_s: a number"),
        (
            lambda t: t.replace('models = ["m"]', 'models = ["m", ""]'),
            "upstreams[0].models[1]: empty model name",
        ),
        (
            lambda t: t.replace('models = ["m"]', 'models = ["m", "n", "m"]'),
            "upstreams[0]: models: 'm' is listed twice",
        ),
        # Ids are admin URL segments (/admin/upstreams/{id}), DNS members' names (id@host:port)
        # and ctl's arguments: "/" could not be operated at all.
        (
            lambda t: t.replace('id = "eu-1"', 'id = "eu/1"'),
            "upstreams[0].id: id 'eu/1': use letters, digits and _.-",
        ),
        (
            lambda t: t.replace('id = "eu-1"', 'id = "gpu@fra"'),
            "upstreams[0].id: id 'gpu@fra': use letters, digits and _.-",
        ),
        (
            lambda t: t.replace('id = "eu-central"', 'id = "eu central"'),
            "regions[0].id: id 'eu central': use letters",
        ),
        (lambda t: t.replace('id = "eu-1"', 'id = ".."'), "upstreams[0].id: id '..'"),
        (lambda t: t.replace('id = "eu-1"', 'id = "-x"'), "upstreams[0].id: id '-x'"),
        (lambda t: t.replace('id = "eu-1"', 'id = ""'), "upstreams[0].id: id ''"),
        # A region's drain is the top-level drained_regions (a key in regions[] would make a
        # gateway of the release before it refuse the fleet's document).
        (lambda t: t.replace("8.68\n", "8.68\ndrained = true\n"), "regions[0].drained: unknown"),
        (
            lambda t: "drained_regions = {us-east = []}\n" + t,
            "drained_regions: 'us-east' is not among regions (eu-central)",
        ),
        # redis.state_file: only with a fleet, and in a directory there is (checked at start:
        # a warning at each change said so before, and the restart routed on the file).
        (
            lambda t: t + '[redis]\nstate_file = "fleet.json"\n',
            "redis: state_file keeps a fleet's document: set redis.url, or drop it",
        ),
        (
            lambda t: t + '[redis]\nurl = "redis://127.0.0.1:1"\nstate_file = "no/fleet.json"\n',
            "redis.state_file: no directory ",
        ),
        (  # "" named the config's folder: passed, then never written (a warning per change)
            lambda t: t + '[redis]\nurl = "redis://127.0.0.1:1"\nstate_file = ""\n',
            "redis.state_file: is empty: give a file's path, or leave the setting out",
        ),
        (  # a folder: passed, then never written
            lambda t: t + '[redis]\nurl = "redis://127.0.0.1:1"\nstate_file = "."\n',
            "is a directory; name a file in it (fleet.json)",
        ),
        # A port's typo: the gateway forwarding to itself made one request into thousands.
        (
            lambda t: t.replace("127.0.0.1:9000", "127.0.0.1:8080"),
            "upstreams[0] (eu-1): url http://127.0.0.1:8080 is this gateway's own listener "
            "(server.port 8080)",
        ),
        (  # its password masked, as in every other message that shows a URL
            lambda t: t.replace("http://127.0.0.1:9000", "http://user:s3cret@127.0.0.1:8080"),
            "url http://user:****@127.0.0.1:8080 is this gateway's own listener",
        ),
        # Past what listen() and granian take: a traceback at start, after --check passed.
        (
            lambda t: t + "[server]\nbacklog = 3000000000\n",
            "server.backlog: Input should be less than or equal to 65535 (got 3000000000)",
        ),
        (
            lambda t: t + "[server]\nh2_max_concurrent_streams = 10000000000\n",
            "server.h2_max_concurrent_streams: Input should be less than or equal to 2147483647",
        ),
        # No upper bound: a healthy_threshold of 1e20 kept a downed upstream down for good,
        # and a max_header_bytes of 3e9 crash-looped granian's workers after --check passed.
        *(
            (
                lambda t, s=section, k=key, b=big: t + f"[{s}]\n{k} = {b}\n",
                f"{section}.{key}: Input should be less than or equal to {most}",
            )
            for section, key, big, most in (
                ("server", "max_header_bytes", "3000000000", "1048576"),
                ("router", "tolerance_ms", "1e20", "10000"),
                ("router", "tolerance_ratio", "1e300", "10"),
                ("health", "healthy_threshold", "100000000000000000000", "1000"),
                ("health", "unhealthy_threshold", "1001", "1000"),
                ("outlier", "consecutive_failures", "1000001", "1000000"),
                ("outlier", "failure_rate_min_requests", "1000001", "1000000"),
                ("retry", "budget_min_per_s", "1e20", "1000000"),
                ("log", "max_repeats", "1000001", "1000000"),
            )
        ),
        (
            lambda t: t.replace("127.0.0.1:9000", "localhost:9000") + "[server]\nport = 9000\n",
            "upstreams[0] (eu-1): url http://localhost:9000 is this gateway's own listener",
        ),
        (
            lambda t: t.replace("http://127.0.0.1:9000", "http://[::1]") + "[server]\nport = 80\n",
            "is this gateway's own listener (server.port 80)",
        ),
        (
            lambda t: 'drained_regions = {eu-central = ["eu-2"]}\n' + t,
            "drained_regions.eu-central: 'eu-2' is not an upstream of region eu-central (its "
            "upstreams: eu-1)",
        ),
    ],
)
def test_errors_are_one_line_naming_file_and_key(
    tmp_path: Path, mutate: object, expect: str
) -> None:
    path = write(tmp_path, mutate(GOOD))  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    msg = str(info.value)
    assert expect in msg and str(path) in msg and "\n" not in msg


def test_a_missing_tls_file_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("k")
    text = GOOD + '[server]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert str(info.value) == (
        f"config error in {tmp_path / 'gw.toml'}: server.tls_cert: cannot read "
        f"{tmp_path / 'cert.pem'}: No such file or directory"
    )
    self_signed_cert(tmp_path)  # cert.pem and key.pem
    assert load_config(write(tmp_path, text), env={}).server.tls_cert == tmp_path / "cert.pem"


def test_an_unusable_tls_pair_is_one_line_naming_the_file_at_fault(tmp_path: Path) -> None:
    """Readable but not a certificate and its key: said at load, not as an ssl.SSLError
    traceback from each worker at start."""
    cert, key = self_signed_cert(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    other_key = self_signed_cert(other)[1]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", key, "-aes256", "-passout", "pass:x", "-out", encrypted],
        check=True,
    )
    small = tmp_path / "small"  # an RSA-1024 pair: OpenSSL refuses the key's size
    small.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=x", "-days",
         "1", "-keyout", small / "k.pem", "-out", small / "c.pem"],
        check=True, capture_output=True,
    )  # fmt: skip
    gw = tmp_path / "gw.toml"
    for c, k, expect in [
        (small / "c.pem", small / "k.pem", "server.tls_cert/tls_key: cannot use "),
        (garbage, key, f"server.tls_cert: {garbage} holds no PEM certificate"),
        (cert, other_key, f"server.tls_key: {other_key} is not the key of the certificate in"),
        (cert, garbage, f"server.tls_key: {garbage} holds no PEM private key"),
        (cert, encrypted, f"server.tls_key: {encrypted} is encrypted: give it without a"),
    ]:
        text = GOOD + f'[server]\ntls_cert = "{c}"\ntls_key = "{k}"\n'
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text), env={})
        msg = str(info.value)
        assert msg.startswith(f"config error in {gw}: {expect}") and "\n" not in msg, msg
    env = {"GEOGATE_SERVER__TLS_KEY": str(other_key)}
    text = GOOD + f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    with pytest.raises(
        ConfigError,
        match=r"^config error in GEOGATE_SERVER__TLS_KEY: server\.tls_key: .* is not the",
    ):
        load_config(write(tmp_path, text), env=env)
    assert load_config(write(tmp_path, text), env={}).server.tls_key == key


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_bytes(GOOD.replace("eu-central", "eu-zentral-\xe9").encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == f"config error: {path} is not UTF-8 text"


def test_a_redis_password_is_never_printed(tmp_path: Path) -> None:
    for url in ("http://:hunter2@127.0.0.1:6379", "redis://u:hunter2@127.0.0.1:x"):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, GOOD), env={"GEOGATE_REDIS__URL": url})
        msg = str(info.value)
        assert "GEOGATE_REDIS__URL: redis.url" in msg and ":****@127.0.0.1" in msg, msg
        assert "hunter2" not in msg


def test_operators_tokens(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, GOOD + '[admin]\ntoken = "t0"\ntokens = {alice = "t1", bob = "t2"}\n'),
        env={},
    )
    assert cfg.admin.operators() == {"alice": "t1", "bob": "t2", "admin": "t0"}
    env = {"GEOGATE_ADMIN__TOKENS": '{"carol": "t3"}'}
    assert load_config(write(tmp_path, GOOD), env=env).admin.operators() == {"carol": "t3"}


def test_env_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"GEOGATE_SERVER__PORT: server\.port"):
        load_config(write(tmp_path, GOOD), env={"GEOGATE_SERVER__PORT": "eighty"})
    with pytest.raises(ConfigError, match="GEOGATE_UPSTREAMS: not valid JSON"):
        load_config(write(tmp_path, GOOD), env={"GEOGATE_UPSTREAMS": "[{oops"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})
    # an empty key: "unknown key (a typo?)" naming no key
    for name in ("GEOGATE___PORT", "GEOGATE_SERVER__"):
        with pytest.raises(ConfigError, match=f"{name}: an empty key in the name"):
            load_config(write(tmp_path, GOOD), env={name: "1"})


@pytest.mark.parametrize(
    "var", ["GEOGATE_GEOIP__DATABASE", "GEOGATE_SERVER__TLS_CERT", "GEOGATE_REDIS__STATE_FILE"]
)
def test_a_file_setting_left_empty_is_refused_by_name(tmp_path: Path, var: str) -> None:
    """Blank, it read as the config's directory: GeoIP then said the database was corrupt."""
    key = var.removeprefix("GEOGATE_").lower().replace("__", ".")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env={var: " "})
    assert f"{var}: {key}: is empty: give a file's path, or leave the setting out" in str(
        info.value
    )


def test_a_value_that_starts_as_json_does_is_given_as_a_json_string(tmp_path: Path) -> None:
    # A token starting with "[" could not be given at all: it was always read as JSON.
    token = "[k3Yq9-0123456789abcdef"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env={"GEOGATE_OPS__TOKEN": token})
    assert "is read as JSON; a string that does is written as one" in str(info.value)
    cfg = load_config(write(tmp_path, GOOD), env={"GEOGATE_OPS__TOKEN": json.dumps(token)})
    assert cfg.ops.token == token


def test_relative_paths_resolve_from_the_config_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD + '[geoip]\ndatabase = "geo/city.mmdb"\n'), env={})
    assert cfg.geoip.database == tmp_path / "geo" / "city.mmdb"


def test_edge_keys_are_checked_and_never_repeated(tmp_path: Path) -> None:
    good = "k" * defaults.EDGE_MIN_SECRET_CHARS
    cfg = load_config(write(tmp_path, GOOD + f'[edge]\nkeys = {{k1 = "{good}"}}\n'), env={})
    assert (cfg.edge.keys, cfg.edge.max_skew_s) == ({"k1": good}, defaults.EDGE_MAX_SKEW_S)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env={"GEOGATE_EDGE__KEYS": '{"k1": "hunter2"}'})
    msg = str(info.value)
    assert "edge.keys.k1: String should have at least 32 characters" in msg, msg
    assert "hunter2" not in msg
    with pytest.raises(ConfigError, match=r"edge\.keys\.k;1"):
        load_config(write(tmp_path, GOOD + f'[edge]\nkeys = {{"k;1" = "{good}"}}\n'), env={})


def test_country_and_continent_codes_are_taken_in_either_case(tmp_path: Path) -> None:
    rule = (
        "[[residency]]\ncountries = ['gb', 'XK']\ncontinents = ['eu']\nregions = ['eu-central']\n"
    )
    cfg = load_config(write(tmp_path, GOOD + rule + "[geoip.default]\ncountry = 'de'\n"), env={})
    assert (cfg.residency[0].countries, cfg.residency[0].continents) == (("GB", "XK"), ("EU",))
    assert cfg.geoip.default.country == "DE"


def test_nameservers_take_addresses_with_or_without_a_port(tmp_path: Path) -> None:
    servers = '["192.0.2.53", "192.0.2.53:5353", "2001:db8::53", "[2001:db8::53]:53", "[::1]"]'
    cfg = load_config(write(tmp_path, GOOD + f"[discovery]\nnameservers = {servers}\n"), env={})
    assert len(cfg.discovery.nameservers) == 5


def test_workers_with_the_admin_api_and_redis_or_without_the_admin_api(tmp_path: Path) -> None:
    with_redis = (
        '[server]\nworkers = 2\n[admin]\ntoken = "t"\n[redis]\nurl = "redis://127.0.0.1:1"\n'
    )
    assert load_config(write(tmp_path, GOOD + with_redis), env={}).server.workers == 2
    assert (
        load_config(write(tmp_path, GOOD + "[server]\nworkers = 2\n"), env={}).server.workers == 2
    )


def test_env_overrides_take_an_empty_value_and_keep_the_case_of_mapping_keys(
    tmp_path: Path,
) -> None:
    good = "k" * defaults.EDGE_MIN_SECRET_CHARS
    env = {
        "GEOGATE_REDIS__URL": "",  # as compose and Helm templates write an unset value
        "GEOGATE_EDGE__KEYS__K1": good,  # the Worker signs with kid=K1
        "GEOGATE_ADMIN__TOKENS__Alice": "t1",
    }
    cfg = load_config(write(tmp_path, GOOD), env=env)
    assert cfg.redis.url == ""
    assert cfg.edge.keys == {"K1": good}
    assert cfg.admin.operators() == {"Alice": "t1"}


def test_an_error_inside_a_json_override_names_its_variable_and_hides_credentials(
    tmp_path: Path,
) -> None:
    url = "https://bob:s3cret-key@127.0.0.1:9000/v1"
    ups = f'[{{"id": "u", "region": "eu-central", "url": "{url}", "models": ["m"]}}]'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env={"GEOGATE_UPSTREAMS": ups})
    msg = str(info.value)
    assert msg.startswith("config error in GEOGATE_UPSTREAMS: upstreams[0].url: ends in /v1"), msg
    assert "s3cret-key" not in msg and "bob:****@127.0.0.1" in msg


def test_a_byte_order_mark_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())  # as Windows editors save UTF-8
    assert load_config(path, env={}).gateway.region == "eu-central"


def test_an_env_override_into_a_list_says_to_give_the_list_whole(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env={"GEOGATE_UPSTREAMS__0__WEIGHT": "-1"})
    assert str(info.value) == (
        "config error in GEOGATE_UPSTREAMS__0__WEIGHT: upstreams is a list: override it "
        "whole as JSON (GEOGATE_UPSTREAMS='[...]')"
    )
    # The same without upstreams in the file: the schema says it is a list.
    no_upstreams = GOOD.partition("[[upstreams]]")[0]
    with pytest.raises(ConfigError, match=r"upstreams is a list: override it whole as JSON"):
        load_config(write(tmp_path, no_upstreams), env={"GEOGATE_UPSTREAMS__0__WEIGHT": "-1"})
    with pytest.raises(ConfigError, match=r"in GEOGATE_SERVER__PORT__X: server\.port is not a"):
        load_config(
            write(tmp_path, GOOD + "[server]\nport = 1\n"), env={"GEOGATE_SERVER__PORT__X": "1"}
        )


def test_numbers_from_the_environment_are_still_taken_as_text(tmp_path: Path) -> None:
    env = {"GEOGATE_SERVER__MAX_BODY_BYTES": "1024", "GEOGATE_UPSTREAMS": (
        '[{"id": "u", "region": "eu-central", "url": "http://127.0.0.1:1", "models": ["m"],'
        ' "weight": "2.5"}]'
    )}  # fmt: skip
    cfg = load_config(write(tmp_path, GOOD), env=env)
    assert (cfg.server.max_body_bytes, cfg.upstreams[0].weight) == (1024, 2.5)
    with pytest.raises(ConfigError, match=r"GEOGATE_SERVER__PORT: server\.port"):
        load_config(write(tmp_path, GOOD), env={"GEOGATE_SERVER__PORT": "true"})


def test_an_error_across_keys_names_the_variables_that_were_applied(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + '[admin]\ntoken = "t"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"GEOGATE_SERVER__WORKERS": "2", "GEOGATE_LOG__LEVEL": "info"})
    assert str(info.value).startswith(
        f"config error in {path} with GEOGATE_LOG__LEVEL, GEOGATE_SERVER__WORKERS: "
        "server.workers = 2 with the admin API on needs redis.url"
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env={"GEOGATE_LOAD__POLL_INTERVAL_S": "5"})
    assert str(info.value).startswith(
        f"config error in {path} with GEOGATE_LOAD__POLL_INTERVAL_S: load: max_age_s (2)"
    )


def test_a_bad_redis_flag_is_named_as_the_flag(tmp_path: Path) -> None:
    args = argparse.Namespace(config=write(tmp_path, GOOD), redis="http://:hunter2@127.0.0.1:1")
    with pytest.raises(CLIError) as info:
        commands.gateway(args)
    assert str(info.value) == "--redis http://:****@127.0.0.1:1: use redis://, rediss://, " + (
        "unix:// or redis+sentinel://"
    )
    assert "GEOGATE_REDIS__URL" not in os.environ


def test_an_error_line_names_the_keys_of_the_errors_after_it(tmp_path: Path) -> None:
    # "(and 1 more)" hid where: an operator fixed one and met the next at the next start.
    text = GOOD + '[geoip.default]\nlatitude = 500\nlongitude = 0\ncountry = "UK"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    msg = str(info.value)
    assert "geoip.default.latitude:" in msg and "(and 1 more, at geoip.default.country)" in msg
    assert "\n" not in msg


def test_a_state_file_in_a_directory_it_cannot_write_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root writes anywhere: os.access answers for a directory this user could not write.
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode)
    )
    text = GOOD + '[redis]\nurl = "redis://127.0.0.1:1"\nstate_file = "fleet.json"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert f"redis.state_file: cannot write in {tmp_path}" in str(info.value)


def test_a_state_file_that_names_another_file_is_refused(tmp_path: Path) -> None:
    """The first sync replaced the file named whole: the gateway's own config, a device."""
    text = GOOD + '[redis]\nurl = "redis://127.0.0.1:1"\nstate_file = "{}"\n'
    config = write(tmp_path, text.format("gw.toml"))  # its own config (write's name)
    assert config.name == "gw.toml"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # not a regular file: a device node reads the same
    other = tmp_path / "notes.json"
    other.write_text('{"fleet": 1}')  # JSON, not a state file
    for name in (config.name, fifo.name, other.name):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text.format(name)), env={})
        assert (
            f"redis.state_file: {tmp_path / name} exists and is not a state file geogate wrote"
            in str(info.value)
        )
    for fine in ("new.json", "empty.json", "kept.json"):  # none yet, empty, or one it wrote
        (tmp_path / "empty.json").write_text("")
        (tmp_path / "kept.json").write_text('{"fleet": "x", "doc": {}, "version": 2}')
        assert load_config(write(tmp_path, text.format(fine)), env={}).redis.state_file == (
            tmp_path / fine
        )


def test_an_ops_token_that_is_an_operators_too_is_refused(tmp_path: Path) -> None:
    """Handed to Prometheus and the edge Worker, it made audited changes as alice."""
    env = {"GEOGATE_ADMIN__TOKENS__ALICE": "alice-0123456789abcdef"}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env={**env, "GEOGATE_OPS__TOKEN": env.popitem()[1]})
    assert "ops.token is an admin operator's token too" in str(info.value)
    assert "alice-0123456789abcdef" not in str(info.value)


def test_several_workers_without_redis_need_no_redis_with_no_ops_listener(
    tmp_path: Path,
) -> None:
    """The admin API is the ops listener's: with none there is no admin change to lose."""
    env = {"GEOGATE_ADMIN__TOKENS__ALICE": "alice-0123456789abcdef", "GEOGATE_SERVER__WORKERS": "2"}
    with pytest.raises(ConfigError, match=r"with the admin API on needs redis\.url"):
        load_config(write(tmp_path, GOOD), env=env)
    cfg = load_config(write(tmp_path, GOOD), env={**env, "GEOGATE_OPS__PORT": "0"})
    assert (cfg.server.workers, cfg.ops.port) == (2, 0)
