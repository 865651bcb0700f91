-- atmx schema. Applied at every start; every statement is idempotent.

CREATE TABLE IF NOT EXISTS schema_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- One row per atproto account atmx has seen with a binding (or an event for one).
CREATE TABLE IF NOT EXISTS accounts (
    did              text PRIMARY KEY,
    handle           text,                         -- the handle claimed in the DID document
    handle_verified  boolean NOT NULL DEFAULT false, -- handle resolves back to this DID
    handle_checked_at timestamptz,
    active           boolean NOT NULL DEFAULT true,
    status           text,                         -- takendown | suspended | deleted | deactivated | desynchronized | throttled | NULL
    rev              text,                         -- rev of the last verified commit applied
    data_cid         text,                         -- MST root of that commit
    pds              text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS accounts_handle_idx ON accounts (lower(handle)) WHERE handle IS NOT NULL;
-- rev of the latest commit seen on the firehose for this repo, whatever it touched. Commits that
-- touch no indexed collection are not verified (only their rev and since are read), so this
-- is a hint for spotting missed commits (a gap queues a proof re-fetch), never a proof.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS seen_rev text;

-- One row per (did, protocol): the current record at rkey self.
CREATE TABLE IF NOT EXISTS bindings (
    did            text NOT NULL REFERENCES accounts (did) ON DELETE CASCADE,
    protocol       text NOT NULL CHECK (protocol IN ('xmtp', 'didcomm')),
    uri            text NOT NULL,
    cid            text NOT NULL,
    rev            text NOT NULL,
    record         jsonb NOT NULL,                 -- the record as published (atproto JSON form)
    status         text NOT NULL CHECK (status IN ('valid', 'invalid', 'pending', 'verified', 'unverifiable')),
    reason         text,                           -- machine-readable reason when not valid/verified
    xmtp_inbox_id  text,                           -- copy of record.id for XMTP lookups
    xmtp_env       text,
    xmtp_installation text,
    created_at     text,                           -- record.createdAt as published
    indexed_at     timestamptz NOT NULL DEFAULT now(),
    verified_at    timestamptz,
    PRIMARY KEY (did, protocol)
);
CREATE INDEX IF NOT EXISTS bindings_inbox_idx ON bindings (xmtp_inbox_id) WHERE xmtp_inbox_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS bindings_protocol_idx ON bindings (protocol, did);

-- DID documents, cached. doc is NULL for a cached miss (not found / tombstoned / error).
CREATE TABLE IF NOT EXISTS did_cache (
    did         text PRIMARY KEY,
    doc         jsonb,
    error       text,
    fetched_at  timestamptz NOT NULL DEFAULT now()
);

-- Firehose cursors, one per upstream URL (seq numbers are not portable between hosts).
CREATE TABLE IF NOT EXISTS cursors (
    upstream    text PRIMARY KEY,
    seq         bigint NOT NULL,
    event_time  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Rejected events, kept for operators (bounded by the pipeline's retention job).
CREATE TABLE IF NOT EXISTS rejections (
    id          bigserial PRIMARY KEY,
    did         text NOT NULL,
    seq         bigint,
    kind        text NOT NULL,
    reason      text NOT NULL,
    detail      text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS rejections_did_idx ON rejections (did, at DESC);

-- Repos whose index state must be re-fetched with proof (gap, #sync, unreachable identity).
-- The backfill job drains it.
CREATE TABLE IF NOT EXISTS resync_queue (
    did        text PRIMARY KEY,
    reason     text NOT NULL,
    queued_at  timestamptz NOT NULL DEFAULT now(),
    attempts   integer NOT NULL DEFAULT 0
);

-- XMTP verification (the check that the inbox signed the DID).
ALTER TABLE bindings ADD COLUMN IF NOT EXISTS xmtp_checked_at timestamptz;
ALTER TABLE bindings ADD COLUMN IF NOT EXISTS xmtp_next_check timestamptz;
ALTER TABLE bindings ADD COLUMN IF NOT EXISTS xmtp_attempts integer NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS bindings_xmtp_due_idx ON bindings (xmtp_next_check) WHERE protocol = 'xmtp';

-- Each XMTP inbox's identity log as fetched from one XMTP environment, kept so that a
-- recheck fetches only what is new since last_sequence_id.
CREATE TABLE IF NOT EXISTS xmtp_inbox_logs (
    inbox_id          text NOT NULL,
    env               text NOT NULL,
    last_sequence_id  bigint NOT NULL DEFAULT 0,
    updates           bytea[] NOT NULL DEFAULT '{}',  -- IdentityUpdate protobufs, in sequence order
    sequence_ids      bigint[] NOT NULL DEFAULT '{}',
    fetched_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (inbox_id, env)
);

-- Backfill: every candidate repo found by discovery, and how far fetching it has got.
-- state: pending (to fetch), done, failed (retried by the next run), skipped (repo gone/unresolvable).
CREATE TABLE IF NOT EXISTS backfill_repos (
    id          bigserial UNIQUE,                 -- discovery order; the fetch loop pages by it
    did         text PRIMARY KEY,
    source      text NOT NULL,
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed', 'skipped')),
    attempts    integer NOT NULL DEFAULT 0,
    error       text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS backfill_repos_todo_idx ON backfill_repos (id) WHERE state IN ('pending', 'failed');

-- Discovery position per source (relay collection directory, relay or PDS listRepos).
CREATE TABLE IF NOT EXISTS backfill_sources (
    source      text PRIMARY KEY,
    cursor      text,
    complete    boolean NOT NULL DEFAULT false,
    repos       bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO schema_meta (key, value) VALUES ('version', '1') ON CONFLICT (key) DO NOTHING;
