"""Every Prometheus metric atmx exports, defined once (prefix `atmx_`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("atmx_firehose_events_total", "Firehose messages received, by type", ["type"])
FRAME_ERRORS = Counter("atmx_firehose_frame_errors_total", "Malformed firehose messages, by reason", ["reason"])
UPSTREAM_ERRORS = Counter(
    "atmx_firehose_upstream_errors_total",
    "Error frames and #info notices from the upstream (FutureCursor, ConsumerTooSlow, OutdatedCursor...)",
    ["name"],
)
RECONNECTS = Counter("atmx_firehose_reconnects_total", "Websocket reconnects, by cause", ["cause"])
MATCHED_OPS = Counter(
    "atmx_matched_ops_total", "Record operations under an indexed collection", ["collection", "action"]
)
VERIFICATIONS = Counter(
    "atmx_verifications_total",
    "Repo verification outcomes of processed commits and syncs (reason is 'ok' on success)",
    ["kind", "reason"],
)
RECORDS = Counter(
    "atmx_records_total", "Record validation outcomes (reason is 'ok' for a valid record)", ["protocol", "reason"]
)
STALE_EVENTS = Counter("atmx_stale_events_total", "Events whose rev was not newer than the stored one", ["kind"])
RESYNCS_QUEUED = Counter("atmx_resync_queued_total", "Repos queued for a proof re-fetch, by reason", ["reason"])
IDENTITY_RESULTS = Counter("atmx_identity_resolutions_total", "DID and handle resolution results", ["kind", "outcome"])
CURSOR = Gauge("atmx_firehose_cursor", "Last firehose seq whose event and all before it are processed")
RECEIVED_SEQ = Gauge("atmx_firehose_received_seq", "Last firehose seq received")
LAG = Gauge(
    "atmx_firehose_lag_seconds",
    "Delay of events received or replayed but not yet processed (0 on a caught-up stream, however quiet)",
)
IDLE = Gauge("atmx_firehose_idle_seconds", "Seconds since the last firehose event arrived (0 before the first)")
STATE = Gauge(
    "atmx_firehose_state",
    "1 for the firehose state this indexer is in (live, idle, lagging, disconnected), 0 for the others",
    ["state"],
)
IN_FLIGHT = Gauge("atmx_pipeline_in_flight", "Events received but not yet fully processed")
TRACKED_REPOS = Gauge("atmx_tracked_repos", "Accounts in the index")
DB_WRITE_SECONDS = Histogram(
    "atmx_db_write_seconds",
    "Latency of one index write transaction",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DB_ERRORS = Counter("atmx_db_errors_total", "Database operations that failed and were retried", ["op"])
VERIFY_SECONDS = Histogram(
    "atmx_verify_seconds",
    "Time spent verifying one commit message (on the event loop, so CPU-bound)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
)
API_REQUESTS = Counter("atmx_api_requests_total", "XRPC requests, by method and HTTP status", ["method", "status"])
API_SECONDS = Histogram(
    "atmx_api_request_seconds",
    "XRPC request latency, by method",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)


# --- backfill and gap repair ---
BACKFILL_REPOS = Counter(
    "atmx_backfill_repos_total", "Repos fetched with proof by backfill or gap repair, by outcome", ["job", "outcome"]
)
BACKFILL_DONE = Gauge("atmx_backfill_done", "Backfill: candidate repos finished (done, failed or skipped)")
BACKFILL_TOTAL = Gauge("atmx_backfill_total", "Backfill: candidate repos discovered")
BACKFILL_ERRORS = Gauge("atmx_backfill_errors", "Backfill: repos of this run that failed or were skipped")
BACKFILL_RATE = Gauge("atmx_backfill_rate", "Backfill: repos per second over the last seconds")
BACKFILL_ETA = Gauge("atmx_backfill_eta_seconds", "Backfill: estimated seconds to finish")
BACKFILL_DISCOVERED = Counter("atmx_backfill_discovered_total", "Candidate repos found, by source kind", ["kind"])
BACKFILL_REQUESTS = Counter(
    "atmx_backfill_requests_total", "Outbound sync requests of backfill, by method and result", ["method", "result"]
)
BACKFILL_PAUSE_SECONDS = Counter(
    "atmx_backfill_rate_limit_pause_seconds_total", "Seconds hosts told us to stay away (Retry-After, RateLimit-*)"
)
RESYNC_QUEUE = Gauge("atmx_resync_queue", "Repos waiting in resync_queue for a proof re-fetch")


def observe_api(method: str, status: int, seconds: float) -> None:
    API_REQUESTS.labels(method, str(status)).inc()
    API_SECONDS.labels(method).observe(seconds)


def observe_identity(kind: str, outcome: str) -> None:
    IDENTITY_RESULTS.labels(kind, outcome).inc()


XMTP_VERIFICATIONS = Counter(
    "atmx_xmtp_verifications_total",
    "XMTP binding checks, by outcome (verified, invalid, unverifiable), reason and the environment that"
    " decided (comma-separated when several did together: inbox_not_found in every one)",
    ["outcome", "reason", "env"],
)
XMTP_API_SECONDS = Histogram(
    "atmx_xmtp_api_seconds",
    "Latency of XMTP network calls, by environment and method",
    ["env", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
XMTP_API_ERRORS = Counter(
    "atmx_xmtp_api_errors_total", "XMTP network calls that failed, by environment and reason", ["env", "reason"]
)
XMTP_QUEUE = Gauge("atmx_xmtp_recheck_queue", "XMTP bindings due for a check or recheck")
XMTP_REFUSED = Counter(
    "atmx_xmtp_refused_total",
    "XMTP node answers refused, by environment and reason: inbox_id_mismatch (another inbox's log),"
    " bad_response/too_large/sequence_not_increasing (not an honest answer), log_rewritten (the node"
    " dropped or changed updates atmx stored from it), inbox_log_invalid:<why> (the log does not fold),"
    " scw_unverifiable (the node could not decide a smart-contract-wallet signature),"
    " stored_log_invalid (a stored log that no longer folds, discarded)",
    ["env", "reason"],
)
XMTP_LOG_REPAIRS = Counter(
    "atmx_xmtp_log_repairs_total",
    "Stored XMTP inbox logs repaired, by environment and kind: gap_filled (updates an earlier answer had left out)",
    ["env", "kind"],
)


def observe_xmtp_call(env: str, method: str, seconds: float, outcome: str) -> None:
    XMTP_API_SECONDS.labels(env, method).observe(seconds)
    if outcome != "ok":
        XMTP_API_ERRORS.labels(env, outcome).inc()


# --- active/standby indexers (indexer/leader.py) ---
INDEXER_ACTIVE = Gauge("atmx_indexer_active", "1 while this process holds the indexer lock and indexes, 0 on standby")
DATABASE_UP = Gauge("atmx_database_up", "1 when the indexer's last check of its PostgreSQL lock connection succeeded")

INTERNAL_ERRORS = Counter(
    "atmx_internal_errors_total",
    "Events whose processing failed unexpectedly (recorded, their repo re-fetched), by exception class",
    ["error"],
)

# --- the change stream (api/subscription.py) ---
STREAM_CONSUMERS = Gauge("atmx_stream_consumers", "subscribeBindings consumers connected to this process")
STREAM_HEAD = Gauge("atmx_stream_head_seq", "Last change-log seq this process has read")
STREAM_SENT = Counter("atmx_stream_frames_sent_total", "subscribeBindings frames sent")
STREAM_REPLAYED = Counter("atmx_stream_replayed_total", "Changes replayed from the log to consumers with a cursor")
STREAM_DROPPED = Counter("atmx_stream_consumers_dropped_total", "Consumers closed by the server, by reason", ["reason"])
REQUEST_INDEX = Counter("atmx_request_index_total", "requestIndex calls, by outcome", ["outcome"])
HANDLE_CHECKS = Counter("atmx_handle_checks_total", "Scheduled re-checks of account handles, by outcome", ["outcome"])
