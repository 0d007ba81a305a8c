"""Every default in one place, named, with the reason for its value (README lists them all)."""

from __future__ import annotations

# --- server ---------------------------------------------------------------------------------
HOST = "127.0.0.1"
PORT = 8080
WORKERS = 1  # state is per process until Redis (issue 5); one worker keeps one view
MAX_BODY_BYTES = 4 * 1024 * 1024  # 4 MiB: long chat histories fit, a runaway upload does not
DRAIN_TIMEOUT_S = 30.0  # SIGTERM: streams in flight get this long to finish

# --- upstream timeouts ----------------------------------------------------------------------
CONNECT_TIMEOUT_S = 3.0  # a cross-ocean TCP+TLS handshake is ~3 RTTs of ~0.3 s at worst
FIRST_BYTE_TIMEOUT_S = 60.0  # a big prompt's prefill on a busy GPU can take tens of seconds
IDLE_TIMEOUT_S = 60.0  # longest silence between two chunks of a streamed response
TOTAL_TIMEOUT_S = 600.0  # a whole response; long generations at slow token rates

# --- retries --------------------------------------------------------------------------------
MAX_ATTEMPTS = 3  # first try + 2 failovers: a second region, then a third
RETRY_BUDGET_RATIO = 0.2  # retries may add at most 20 % to recent request volume
RETRY_BUDGET_MIN_PER_S = 10.0  # ...but a quiet gateway may always retry this often
RETRY_BUDGET_WINDOW_S = 10.0  # "recent" for the budget

# --- router ---------------------------------------------------------------------------------
TOLERANCE_MS = 15.0  # band of near-equal scores: max(15 ms, 15 %) as DESIGN.md §3
TOLERANCE_RATIO = 0.15
PANIC_THRESHOLD = 0.5  # Envoy's default: under 50 % healthy, use unhealthy ones too
NO_CANDIDATE_RETRY_AFTER_S = 5  # Retry-After on a 503: about two health-probe intervals
DEFAULT_SLOTS = 16  # concurrent sequences a backend runs at full speed, when not reported

# --- active health checks -------------------------------------------------------------------
HEALTH_PATH = "/health"
HEALTH_INTERVAL_S = 2.0  # detection within ~2 intervals; negligible probe load
HEALTH_TIMEOUT_S = 1.0
HEALTHY_THRESHOLD = 2  # consecutive good probes to come back: one lucky probe is not enough
UNHEALTHY_THRESHOLD = 2  # consecutive bad probes to go down: one dropped packet is not enough
HEALTH_JITTER = 0.1  # +-10 % on each interval so a fleet's probes do not synchronise
RTT_EWMA_ALPHA = 0.3  # weight of the newest probe in the RTT average

# --- passive health (outlier ejection) ------------------------------------------------------
CONSECUTIVE_FAILURES = 5  # Envoy's consecutive_5xx default
BASE_EJECTION_S = 30.0  # Envoy's: out for 30 s x times ejected...
MAX_EJECTION_S = 300.0  # ...capped at 300 s (Envoy's cap)
FAILURE_RATE_THRESHOLD = 0.5  # eject when half the requests of a window failed: a backend
# failing every other request is worse than a slower healthy one, and 5 in a row may never
# happen when failures interleave with successes
FAILURE_RATE_MIN_REQUESTS = 20  # ...but judge a rate only on enough requests to mean it
FAILURE_RATE_WINDOW_S = 10.0  # Envoy's outlier-detection interval
MAX_EJECTED_SHARE = 0.1  # Envoy's max_ejection_percent: ejection cannot empty a pool; one
# upstream may always be ejected, as in Envoy

# --- geoip ----------------------------------------------------------------------------------
GEOIP_RELOAD_INTERVAL_S = 5.0  # a replaced file serves within 5 s; a stat() per interval
DEFAULT_LATITUDE = 50.11  # Frankfurt: the location used for unknown and private addresses
DEFAULT_LONGITUDE = 8.68

# --- fleet (Redis) ----------------------------------------------------------------------------
FLEET_REFRESH_INTERVAL_S = 0.5  # observations written and read twice a second: a backend
# seen down by the fleet leaves every gateway within ~1 s, and 2 small round trips a second
# per gateway is nothing to Redis
OBSERVATION_TTL_S = 5.0  # a dead gateway's opinion stops counting after 5 s (10 refreshes)
REDIS_TIMEOUT_S = 1.0  # a Redis call slower than this counts as Redis being away
REDIS_MAX_BACKOFF_S = 5.0  # reconnect attempts back off 0.1 s doubling up to 5 s
AUDIT_MAX_LEN = 10000  # operator changes kept in the audit stream (approximate trim)

# --- load polling -----------------------------------------------------------------------------
LOAD_POLL_INTERVAL_S = 0.25  # an LLM queue can build within a second of a burst, and a local
# /metrics scrape costs ~1 ms: four scrapes a second per backend see a queue while it forms
LOAD_MAX_AGE_S = 2.0  # a sample older than this (8 missed polls) is ignored, not trusted
LOAD_PATH = "/metrics"
TTFT_EWMA_ALPHA = 0.3  # weight of the newest interval's mean TTFT

# --- discovery --------------------------------------------------------------------------------
DISCOVERY_INTERVAL_S = 5.0  # re-resolve DNS names this often: service-discovery records use
# TTLs of 5-30 s, so a new backend joins within one TTL and a removed one stops getting new
# requests soon after its record goes
DISCOVERY_TIMEOUT_S = 2.0  # a DNS query slower than this keeps the previous members
