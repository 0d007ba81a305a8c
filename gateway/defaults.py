"""Every default in one place, named, with the reason for its value (README lists them all)."""

from __future__ import annotations

from typing import Final

# --- the config file ------------------------------------------------------------------------
CONFIG_MAX_BYTES = 16 << 20  # 16 MiB: a config is kilobytes (a few MiB with thousands of
# upstreams); more is another file, and --config /dev/zero was read until memory ran out

# --- server ---------------------------------------------------------------------------------
HOST = "127.0.0.1"
PORT = 8080
WORKERS = 1  # state is per process until Redis (issue 5); one worker keeps one view
WORKERS_MAX = 1024  # processes forked: past the cores of any one host (the largest have a few
# hundred); 100000 was taken, and would have forked 100,000 processes
MAX_BODY_BYTES = 4 * 1024 * 1024  # 4 MiB: long chat histories fit, a runaway upload does not
MAX_BODY_BYTES_MAX = 1 << 30  # 1 GiB: a body is held whole in memory, per request and worker;
# far past any API request (OpenAI's own uploads stop at 25 MB), so a larger figure is a typo
# A chunked body's bytes as read (sizes, extensions, trailers and data) may be this many times
# server.max_body_bytes (plus a head's worth, for trailers): 4 KiB chunks add 0.2 %, 16-byte
# ones under 40 %; a chunk extension with no end was read until the body's deadline.
CHUNKED_OVERHEAD_MAX = 2
# ...and in at most this many pieces on the other engines (granian hands the app a message per
# chunk sent: in a reviewer's one-off run, a 500 KB body in 1-byte chunks cost 17 CPU-seconds,
# growing faster than the body)
BODY_MAX_PIECES = 65_536
BODY_SMALL_PIECE_BYTES = 1024  # ...when they average under this: a TCP segment is 1,448
# A form field the router reads (model, stream) past this is no model's name: refused, not kept.
FORM_FIELD_MAX_BYTES = 4096
# Parts of an upload's form read at most (aiohttp's limit; Starlette's is 1000 fields and
# 1000 files): an upload is a few fields and a file; each part costs Python calls on the loop.
FORM_MAX_PARTS = 1000
# The form's part headers in all (names and values): an upload's need a few hundred bytes;
# each is parsed in Python on the event loop, so their total bounds the time a form costs.
FORM_MAX_HEADER_BYTES = 64 * 1024
# Another gateway's request from an untrusted peer (runtime's unlocated_hop) is warned of at
# most this often: a misconfigured edge is said within a minute, a client that sends the
# header itself cannot fill the log.
UNLOCATED_HOP_WARN_S = 60.0
# Trusted proxy networks wider than these prefixes are warned of at start: no balancer's
# addresses span an IPv4 /8 or an IPv6 /32 (0.0.0.0/0, or ::ffff:0:0/96 as IPv4, trusts all).
BROAD_V4_PREFIX = 8
BROAD_V6_PREFIX = 32
DRAIN_TIMEOUT_S = 30.0  # SIGTERM: streams in flight get this long to finish
MAX_HEADER_BYTES = 32 * 1024  # request headers in all, names and values: nginx's default
# (4 buffers of 8 KiB) order of magnitude; an API request needs ~1 KiB, and what we accept
# we forward, so a 100 KiB cookie jar would reach (and be refused by) every backend
MAX_HEADER_BYTES_MAX = 1 << 20  # 32 times the default; granian takes twice it as an int32
BODY_TIMEOUT_S = 30.0  # the whole body must arrive within this: a 4 MiB body (max_body_bytes)
# needs ~1.1 Mbit/s, a chat request of kilobytes a slow phone line; a client trickling one
# byte a second holds its connection this long, not forever
LINGER_S = 2.0  # an answer sent before its request's body was all in (a 408, a 413): the
# connection half-closes and drops what still comes this long before it closes, so the close
# meets no unread bytes whose RST could wipe the answer from the client (nginx's lingering
# close); long enough to read an answer across any RTT, short enough that a trickler is gone
HEAD_TIMEOUT_S = 30.0  # the request line and headers, from the connection or the request's first
# byte: a few hundred bytes; a client that trickles them (slowloris) is cut, as nginx's
# client_header_timeout does (60 s there); the uvicorn engine's, which has none of its own
AUDIT_MAX_COUNT = 1000  # audit entries one request may ask for (admin API, geogate ctl audit)
# A compressed body is decoded in pieces of this many bytes (encoding.py: what zlib copies at
# each member's end is bounded by it), and a gzip body of more members than this is refused:
# bgzip's 64 KiB blocks make 64 members of a 4 MiB body; nothing real sends a thousand.
INFLATE_PIECE_BYTES = 16 * 1024
INFLATE_MAX_MEMBERS = 1024  # at least; a member per 32 KiB of a raised max_body_bytes
INFLATE_MEMBER_BYTES = 32 * 1024
ADMIN_MAX_BODY_BYTES = 64 * 1024  # an admin change is a few fields; refused before read whole
MAX_WEIGHT = 1000.0  # upstream weights: shares among near-equal upstreams; beyond 1000:1 a
# share is indistinguishable from all-or-standby, and a bound keeps a typo from being a rule
SRV_ZERO_WEIGHT_SHARE = 1 / MAX_WEIGHT  # an SRV record of weight 0 beside weighted ones: the
# RFC 2782 "very small chance", the smallest share a weight expresses (routing.members)
MAX_BIAS_MS = 10_000.0  # |bias_ms|: 10 s outweighs any RTT plus time to first token, so every
# ordering is expressible; more is a typo

# A request that came through this many gateways (geogate-hops) is refused, 508: an upstream
# that leads back to a gateway (its own port by a typo, two gateways listing each other) made
# one request into thousands until the worker's stream limit. Real chains are short: the edge
# Worker or an edge gateway, a regional gateway, the backend.
MAX_HOPS = 8
LOOP_STATUS = 508  # its answer (RFC 5842 Loop Detected): no upstream's failure, nor a slow token

# --- capacity and drain (one worker) ----------------------------------------------------------
MAX_STREAMS = 10_000  # /v1 requests in flight per worker: an LLM gateway holds long SSE
# streams, and one uvloop worker holds 10,000 (bench/streams.py); beyond, a fast 503, no queue
CONNECTION_HEADROOM = 1024  # max_connections = max_streams + this: idle keep-alive connections,
# health checks and the 503s for streams over the limit need a connection too
MAX_STREAMS_MAX = 1_000_000  # 100 times what one worker holds, and past the descriptors a default
# kernel lets one process open (fs.nr_open: 1,048,576; a stream holds two): a typo beyond it
MAX_CONNECTIONS_MAX = MAX_STREAMS_MAX + CONNECTION_HEADROOM  # what 0 comes to at the most streams
HEADROOM_SHARE_MAX = 32  # with descriptors short, that headroom is at most 1/32 of them, taken
# from the streams (gateway.http.gate.capacity)
BACKLOG = 4096  # kernel accept queue: a reconnect storm after a deploy (1,000+ new
# connections/s) without SYN drops; Linux caps it at net.core.somaxconn (4096 since 5.4)
BACKLOG_MAX = 65535  # what the kernel's somaxconn can be raised to on older kernels; more
# overflowed listen()'s int (a traceback at start, after --check had passed)
H2_MAX_CONCURRENT_STREAMS = 1000  # per HTTP/2 connection: an edge tier multiplexes many
# clients' streams on a few connections, and granian's 200 would queue the rest
H2_MAX_CONCURRENT_STREAMS_MAX = 2**31 - 1  # HTTP/2's SETTINGS value; more crashed granian
OVERLOAD_RETRY_AFTER_S = 1  # Retry-After on the 503 beyond max_streams: at 10,000 streams of
# ~30 s each, ~300 end every second, so a slot is free again within a second
# Retry-After on the 503 past server.max_connections: the connections open are the streams'
# (plus idle keep-alive ones), so one is free again as soon as a stream slot is
CONNECTION_LIMIT_RETRY_AFTER_S = OVERLOAD_RETRY_AFTER_S
FDS_PER_STREAM = 2  # a proxied stream holds the client's socket and the upstream's
FD_RESERVE = 100  # listening sockets, logs, Redis, probes and the runtime's own descriptors
WORKER_EXIT_GRACE_S = 5.0  # after the drain: connections close and the lifespan shuts down;
# a worker still alive drain_timeout_s + this after SIGTERM is killed
MAX_URL_BYTES = 8192  # a request line's URL (nginx's large header buffer): with
# server.max_header_bytes, the most a request's head may hold before the uvicorn engine refuses
RECLAIM_MIN_IDLE_S = 0.25  # an idle connection is closed for room only once idle this long
RECLAIM_LOG_EVERY_S = 1.0  # idle connections closed past max_connections: one line a second
SERVER_TICK_S = 1.0  # uvicorn's main loop wakes this often (its own: 0.1 s): the Date header's
# refresh; an exit wakes it at once (gateway.h1.server)
SERVER_KEEPALIVE_S = 75.0  # an idle client connection is kept this long (nginx's default): above
# the pools in front (an edge gateway's 60 s, an ALB's 60 s idle timeout), so a client never
# sends on a connection the gateway is closing; uvicorn's own default (5 s) is below them all
WORKER_START_GRACE_S = 10.0  # uvicorn's forked workers: one that exits sooner failed to start,
# and would again; later, a worker that dies is replaced (gateway.server.Forked)

# --- durations: the most any of the config's may be ------------------------------------------
# Infinity is refused (no timeout is no protection), and so is a finite figure past these:
# timeouts.total_s = 1e300 was infinity by another name, health.interval_s = 1e300 silently
# ended health checking. Each is far past any real setting, so what exceeds it is a typo.
DURATION_MAX_S = 7 * 24 * 3600.0  # a week: any timeout, window or TTL; a request's whole life
# (timeouts.total_s, the drain that waits for it) covers an agent's or a batch's long stream
CONNECTION_WAIT_MAX_S = 24 * 3600.0  # a day: a wait on one connection (its connect, a request's
# head or body, keep-alive), past any balancer's idle timeout keepalive_s must exceed (4,000 s)
INTERVAL_MAX_S = 3600.0  # an hour: how often health, load, discovery, GeoIP and Redis are looked
# at; checked less often than hourly they are not checked

# --- ops listener ---------------------------------------------------------------------------
OPS_HOST = "127.0.0.1"  # loopback: metrics, the routing table, explain and admin are not public
OPS_PORT = 9180  # not Prometheus's 9090 or node_exporter's 9100, which often share the host
OPS_HEAD_TIMEOUT_S = 5.0  # a scraper's or an operator's request head comes at once (as hypercorn)
OPS_BODY_TIMEOUT_S = 5.0  # and so does an admin change's or a login's body: a few fields
OPS_MAX_CONNECTIONS = 256  # scrapes, ctl, a few dashboard pages: past it, idle ones close first

# --- dashboard (/dashboard on the ops listener) --------------------------------------------
DASHBOARD_SAMPLE_S = 1.0  # one snapshot a second, shared by every open page: live to a person,
# and ~1 ms of one worker's loop whatever the number of pages
DASHBOARD_WATCH_S = 0.1  # a health, drain or ejection change is pushed within 0.1 s, not at
# the next sample: "red within two health intervals" holds for intervals of a second
DASHBOARD_IDLE_AFTER_S = 5.0  # with no page open and no state read for this long, that watch
# stops (the once-a-second sample goes on: the sparklines keep their past); ten wake-ups a
# second cost an idle worker ~1.5 ms of CPU a second (bench/idle_cpu.py)
DASHBOARD_HISTORY_S = 300  # sparklines cover the last 5 minutes: what happened just before
DASHBOARD_RATE_WINDOW_S = 10  # requests/s and error rate over 10 s: steady, yet a failure
# shows within seconds
DASHBOARD_SHARE_WINDOW_S = 60  # "carries 42 % of requests in the last minute"; TTFT p50/p99
DASHBOARD_SESSION_S = 12 * 3600  # a dashboard login lasts a shift and its handover
# Wrong tokens on the ops listener (ops token, admin API, dashboard login) per client address
# and worker: an operator's typos fit, a guesser gets 10 tries a minute instead of thousands
# a second (gateway.http.auth_throttle); the addresses kept are bounded against a scan.
# Dashboard sessions ended by a logout, kept until they would have expired (gateway.fleet.
# sessions): far above a fleet's logouts in one session's life, a bound against a flood.
ENDED_SESSIONS_MAX = 10000
AUTH_FAILURES_MAX = 10
AUTH_FAILURE_WINDOW_S = 60.0
AUTH_TRACKED_ADDRESSES = 4096
AUTH_PREFIX_FACTOR = 10  # an IPv6 /64 may fail 10 times what one address may (its hosts)
AUTH_KNOWN_S = 3600.0  # a good credential this recent: not held back by a table full of guessers
DASHBOARD_AUDIT_REFRESH_S = 5.0  # the audit list is re-read this often (and on each change)
TRAFFIC_MAX_PLACES = 2000  # distinct (place, upstream, model) counted per second; past it a
# request is counted in the totals only, so a scan from a million addresses costs no memory
TRAFFIC_MAX_SAMPLES = 2000  # first-token times kept per upstream per second for percentiles

# --- logs -----------------------------------------------------------------------------------
# The access log is written in batches (gateway.logs.BatchingStreamHandler), as nginx's
# access_log buffer= flush=: one write per batch instead of a write and a flush per request
# (bench/hotpath.py's two "access line" rows price a line either way; fewer wake-ups of a
# log shipper reading the pipe). A line reaches the log at the first of the worker's ticks
# (gateway.ticks: every 0.25 s) at least ACCESS_LOG_FLUSH_S after its batch's first, so within
# about 0.35 s, or when ACCESS_LOG_MAX_LINES wait.
ACCESS_LOG_FLUSH_S = 0.1
ACCESS_LOG_MAX_LINES = 256
LOG_FORMAT: Final = "text"  # what existed: readable event lines, one JSON object per access
# line; "ecs" is for a log pipeline (Filebeat, Elastic Agent) and hard to read on a terminal
LOG_LEVEL: Final = "info"  # events an operator acts on (health, ejections, config changes);
# "debug" adds each failed completion probe
# A worker's lines of one kind that can come once per request (a malformed request, a cut
# stream: gateway.logs.repeating) in a window, the rest counted and said after it
# (gateway.logs.RepeatLimit): a line a second on average, where a flood of bad requests or an
# outage wrote thousands. State changes and ERROR lines are never held back.
LOG_MAX_REPEATS: Final = 10
LOG_MAX_REPEATS_MAX = 1_000_000  # a repeat-limit past which the limit limits nothing
LOG_REPEAT_WINDOW_S: Final = 10.0

# --- upstream timeouts ----------------------------------------------------------------------
# How long a proxied request runs before the gateway watches for its client leaving (and then
# cancels the upstream request): watching costs a task per request, most answers come sooner,
# and a generation that outlives it is still cut short when its client leaves.
DISCONNECT_WATCH_DELAY_S = 0.05
CONNECT_TIMEOUT_S = 3.0  # a cross-ocean TCP+TLS handshake is ~3 RTTs of ~0.3 s at worst
FIRST_BYTE_TIMEOUT_S = 60.0  # a big prompt's prefill on a busy GPU can take tens of seconds
IDLE_TIMEOUT_S = 60.0  # longest silence between two chunks of a streamed response
# A spliced stream (gateway._splice) silent this long asks the client's socket whether the
# client is still there (its reads are paused meanwhile, so nothing else would tell before the
# next token): a client that left stops the upstream's generation within about this, not at
# the idle timeout. Flowing streams are never asked, but a spliced stream's timer comes back
# about every 5 s (it came at the idle timeout): 2,000 callbacks a second at 10,000 spliced
# streams. A stream on the Python relay has no source to ask, and its timer waits for the
# idle timeout as before.
CLIENT_PROBE_S = 5.0
TOTAL_TIMEOUT_S = 600.0  # a whole response; long generations at slow token rates
RESPONSE_TIMEOUT_S = 600.0  # a non-streaming answer arrives whole when generation ends, so
# its wait is the whole generation: as long as total_s allows any response (4,000 tokens at
# 10 tokens/s plus queueing); first_byte_s (a prefill) would cut long answers off

# Reading from the upstream pauses while this much of the body waits for the consumer (a
# slow client), counted by the reads that brought it (chunk framing included): memory per
# stream stays bounded whatever the upstream's pace. aiohttp's StreamReader paused at
# 2 x 64 KiB. One socket read past this is the most it holds (uvloop reads up to 256 000
# bytes at a time: UV_STREAM_RECV_BUF_SIZE).
PAUSE_BYTES: Final = 64 * 1024
# An upstream's response head still unfinished after this much was read is a 502
# (BadResponse), not held on: a 100 MB header was held whole and stalled the loop 3 s. A head
# that ends within one read (up to 256,000 bytes) passes: its memory is the read's anyway.
# Envoy's max_response_headers_kb is 60 KiB; a model server's head is a few hundred bytes.
UPSTREAM_HEAD_MAX_BYTES: Final = 64 * 1024

# --- retries --------------------------------------------------------------------------------
MAX_ATTEMPTS = 3  # first try + 2 failovers: a second region, then a third
MAX_ATTEMPTS_MAX = 100  # upstreams tried for one request, each with its own waits: its client
# gave up long before the hundredth
RETRY_BUDGET_RATIO = 0.2  # retries may add at most 20 % to recent request volume
RETRY_BUDGET_MIN_PER_S = 10.0  # ...but a quiet gateway may always retry this often
RETRY_BUDGET_MIN_PER_S_MAX = 1_000_000.0  # past any request rate: the budget off
RETRY_BUDGET_WINDOW_S = 10.0  # "recent" for the budget

# --- router ---------------------------------------------------------------------------------
TOLERANCE_MS = 15.0  # band of near-equal scores: max(15 ms, 15 %) as DESIGN.md §3
TOLERANCE_RATIO = 0.15
TOLERANCE_MS_MAX = 10_000.0  # a band wider than any RTT and TTFT: every upstream "near-equal"
TOLERANCE_RATIO_MAX = 10.0  # 1,000 %: the same
PANIC_THRESHOLD = 0.5  # Envoy's default: under 50 % healthy, use unhealthy ones too
NO_CANDIDATE_RETRY_AFTER_S = 5  # Retry-After on a 503: about two health-probe intervals
# The longest upstream Retry-After passed on to a client: an hour. An upstream's clock or bug
# ("Retry-After: 999999999999", a date in 9999) had SDKs that honour the header wait years;
# a quota that resets later than this is asked again after an hour.
MAX_RETRY_AFTER_S = 3600
DEFAULT_SLOTS = 16  # concurrent sequences a backend runs at full speed, when not reported
SLOTS_MAX = 1_000_000  # a backend batches hundreds of sequences (vLLM's max_num_seqs: 256)
ROUTE_MEMO_MAX_CANDIDATES = 65536  # candidates the rankings kept for one snapshot hold in
# all (a ranking holds its pool's candidates: one per (served model, residency rule, client
# place)). A snapshot lives a fraction of a second under load polling, and GeoIP places
# clients at city level, so the live set is far smaller; past it the memo starts over. Counted
# in candidates, not rankings, so a flood of distinct coordinates holds the same bounded
# memory, and clears as quickly, whatever the pool's size (a 300-upstream pool's ranking holds
# 300); a model no upstream serves is not kept at all

# --- active health checks -------------------------------------------------------------------
HEALTH_PATH = "/health"
HEALTH_INTERVAL_S = 2.0  # detection within ~2 intervals; negligible probe load
HEALTH_TIMEOUT_S = 1.0
HEALTHY_THRESHOLD = 2  # consecutive good probes to come back: one lucky probe is not enough
UNHEALTHY_THRESHOLD = 2  # consecutive bad probes to go down: one dropped packet is not enough
THRESHOLD_MAX = 1000  # probes in a row: 1e20 kept a downed upstream down for good
HEALTH_JITTER = 0.1  # +-10 % on each interval so a fleet's probes do not synchronise
RTT_EWMA_ALPHA = 0.3  # weight of the newest probe in the RTT average
COMPLETION_PROBE_PATH = "/v1/chat/completions"  # what clients call, so what must work
COMPLETION_PROBE_MAX_TOKENS = 1  # one token proves the model runs; costs one short prefill
COMPLETION_PROBE_MAX_TOKENS_MAX = 1024  # a probe goes to each ejected upstream every interval:
# past a short answer's tokens it is load on a backend already in trouble, not a check
COMPLETION_PROBE_TIMEOUT_S = 10.0  # a one-token answer takes well under a second on a GPU;
# 10 s allows a cold start or a prefill behind other gateways' requests

# --- passive health (outlier ejection) ------------------------------------------------------
CONSECUTIVE_FAILURES = 5  # Envoy's consecutive_5xx default
BASE_EJECTION_S = 30.0  # Envoy's: out for 30 s x a multiplier, one up per ejection and one
# down per 30 s back in rotation without one (gateway.routing.health.next_backoff)...
MAX_EJECTION_S = 300.0  # ...capped at 300 s (Envoy's cap)
FAILURE_RATE_THRESHOLD = 0.5  # eject when half the requests of a window failed: a backend
# failing every other request is worse than a slower healthy one, and 5 in a row may never
# happen when failures interleave with successes
FAILURE_RATE_MIN_REQUESTS = 20  # ...but judge a rate only on enough requests to mean it
OUTLIER_COUNT_MAX = 1_000_000  # failures or requests counted before an ejection
FAILURE_RATE_WINDOW_S = 10.0  # Envoy's outlier-detection interval
MAX_EJECTED_SHARE = 0.1  # Envoy's max_ejection_percent: ejection cannot empty a pool; one
# upstream may always be ejected, as in Envoy

# --- geoip ----------------------------------------------------------------------------------
GEOIP_RELOAD_INTERVAL_S = 5.0  # a replaced file serves within 5 s; a stat() per interval
DEFAULT_LATITUDE = 50.11  # Frankfurt: the location used for unknown and private addresses
DEFAULT_LONGITUDE = 8.68

# --- edge-signed client location (geodb.edge) -------------------------------------------------
EDGE_MAX_SKEW_S = 30.0  # a signed header is good this long either side of its timestamp: the
# Worker signs just before it sends, so it arrives within a second; NTP keeps clocks within
# milliseconds; 30 s leaves room for a lagging clock while a captured header is soon worthless
EDGE_MIN_SECRET_CHARS = 32  # an HMAC key under 256 bits (as hex or base64 text) is refused

# --- fleet (Redis) ----------------------------------------------------------------------------
FLEET_REFRESH_INTERVAL_S = 0.5  # observations written and read twice a second: a backend
# seen down by the fleet leaves every gateway within ~1 s, and 2 small round trips a second
# per gateway is nothing to Redis
OBSERVATION_TTL_S = 5.0  # a dead gateway's opinion stops counting after 5 s (10 refreshes)
REDIS_TIMEOUT_S = 1.0  # a Redis call slower than this counts as Redis being away
# A worker waits up to this for its first sync with Redis before it serves (a worker started in
# place of one that died then routes on the fleet's state); Redis away is known sooner, at a
# refused connection or the connect timeout, and the worker serves on what it has.
FIRST_SYNC_WAIT_S = 3.0
REDIS_MAX_BACKOFF_S = 5.0  # reconnect attempts back off 0.1 s doubling up to 5 s
# After Redis started (empty, or from a saved copy), changes wait this long past a gateway's
# reconnect (redis.max_backoff_s) and one refresh: the gateways cut off meanwhile put back
# what they hold (redis.restart_grace_s's default).
REDIS_RESTORED_MARGIN_S = 1.0
AUDIT_MAX_LEN = 10000  # operator changes kept in the audit stream (approximate trim)

# --- load polling -----------------------------------------------------------------------------
LOAD_POLL_INTERVAL_S = 0.25  # an LLM queue can build within a second of a burst, and a local
# /metrics scrape costs ~1 ms: four scrapes a second per backend see a queue while it forms
LOAD_MAX_AGE_S = 2.0  # older than this (8 polls, 2 while idle) a sample is ignored, not trusted
LOAD_IDLE_POLL_FACTOR = 4  # while no upstream shows load and this worker sends them nothing,
# polls come 4x less often (1 s; bounded by load.max_age_s: load_poller.next_round_s): most of
# an idle worker's CPU was these polls (bench/results/round8/idle_poll5s.md); a queue forming
# behind other gateways is then seen within ~1 s plus a scrape, not 0.25 s
LOAD_PATH = "/metrics"
TTFT_EWMA_ALPHA = 0.3  # weight of the newest interval's mean TTFT
# The wait a request queued ahead of one, per slot, adds when no upstream of the model has a
# fresh TTFT (a TGI fleet, which exports a queue and no TTFT; a cold start): a first token
# on one GPU for a mid-sized model. Queues still rank upstreams then; without one it is 0.
QUEUED_REQUEST_MS = 200.0

# --- discovery --------------------------------------------------------------------------------
DISCOVERY_INTERVAL_S = 5.0  # re-resolve DNS names this often: service-discovery records use
# TTLs of 5-30 s, so a new backend joins within one TTL and a removed one stops getting new
# requests soon after its record goes
DISCOVERY_TIMEOUT_S = 2.0  # a DNS query slower than this keeps the previous members

# --- GeoDNS (geogate dns export) --------------------------------------------------------------
DNS_TTL_S = 30  # answers a resolver may cache: a failed region leaves clients within ~30 s
# plus the health check's detection time, while a resolver asks at most twice a minute
DNS_CHECK_INTERVAL_S = 5  # PowerDNS's own default for LUA health checks (seconds, whole)
DNS_CHECK_TIMEOUT_S = 2  # PowerDNS's default check timeout: a /readyz slower than 2 s is down
DNS_READY_PATH = "/readyz"  # what a region's health check fetches: 503 while it drains

# --- an upstream's refusal ------------------------------------------------------------------
# An error answer's body (a refusal's, 429, 502, 503, and any other from 400 put in OpenAI's
# shape: gateway.http.reshape) read for its message, whole with its head or not at all, and the
# characters of that message kept
REFUSAL_BODY_MAX_BYTES = 4096
REFUSAL_MESSAGE_MAX = 200
