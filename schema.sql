-- atmx schema. Applied at every start; every statement is idempotent, and an index built by an
-- earlier version is upgraded in place (the blocks marked "upgrade" below), with no re-index.

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
    rev              text,                         -- rev of the last verified commit (or record proof) applied
    data_cid         text,                         -- MST root of that commit
    pds              text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS accounts_handle_idx ON accounts (lower(handle)) WHERE handle IS NOT NULL;
-- written by version 1 (the rev of unverified commits); no longer read
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS seen_rev text;
CREATE INDEX IF NOT EXISTS accounts_handle_check_idx ON accounts (handle_checked_at) WHERE handle IS NOT NULL;

-- One row per record of an indexed collection (keyed by its at:// URI): the current record.
CREATE TABLE IF NOT EXISTS bindings (
    uri            text PRIMARY KEY,
    did            text NOT NULL REFERENCES accounts (did) ON DELETE CASCADE,
    collection     text NOT NULL,
    rkey           text NOT NULL,
    protocol       text NOT NULL,
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
    verified_at    timestamptz
);

-- upgrade from version 1: bindings were keyed by (did, protocol), one record at rkey self each
ALTER TABLE bindings ADD COLUMN IF NOT EXISTS collection text;
ALTER TABLE bindings ADD COLUMN IF NOT EXISTS rkey text;
ALTER TABLE bindings ADD COLUMN IF NOT EXISTS key_bytes bytea;  -- a public key the record publishes
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
        WHERE c.conrelid = 'bindings'::regclass AND c.contype = 'p' AND a.attname = 'protocol'
    ) THEN
        UPDATE bindings SET
            collection = split_part(substr(uri, length('at://' || did || '/') + 1), '/', 1),
            rkey = split_part(substr(uri, length('at://' || did || '/') + 1), '/', 2)
        WHERE collection IS NULL;
        ALTER TABLE bindings DROP CONSTRAINT bindings_pkey;
        ALTER TABLE bindings ADD PRIMARY KEY (uri);
    END IF;
    -- version 1 allowed only its two protocols
    ALTER TABLE bindings DROP CONSTRAINT IF EXISTS bindings_protocol_check;
END $$;
ALTER TABLE bindings ALTER COLUMN collection SET NOT NULL;
ALTER TABLE bindings ALTER COLUMN rkey SET NOT NULL;

CREATE INDEX IF NOT EXISTS bindings_inbox_idx ON bindings (xmtp_inbox_id) WHERE xmtp_inbox_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS bindings_protocol_idx ON bindings (protocol, did);
CREATE INDEX IF NOT EXISTS bindings_did_idx ON bindings (did, protocol);
CREATE INDEX IF NOT EXISTS bindings_key_idx ON bindings (did, key_bytes) WHERE key_bytes IS NOT NULL;

-- The proof of each binding's current version, exactly as atmx verified it: a CAR with the
-- signed commit, the MST nodes on the record's path and the record (getRecord's shape).
CREATE TABLE IF NOT EXISTS binding_proofs (
    uri          text PRIMARY KEY REFERENCES bindings (uri) ON DELETE CASCADE,
    rev          text NOT NULL,
    car          bytea NOT NULL,
    signing_key  text,                             -- did:key of the key that signed the commit
    pds          text,
    observed_at  timestamptz NOT NULL DEFAULT now()
);

-- Every version atmx has seen of every binding, newest last (retention: ATMX_HISTORY_RETENTION).
CREATE TABLE IF NOT EXISTS binding_history (
    id           bigserial PRIMARY KEY,
    did          text NOT NULL,
    uri          text NOT NULL,
    protocol     text NOT NULL,
    rev          text NOT NULL,
    cid          text,
    action       text NOT NULL,                    -- create | update | delete | verdict
    status       text NOT NULL,
    reason       text,
    projection   jsonb,                            -- what getIdentity showed of this version
    observed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS binding_history_did_idx ON binding_history (did, protocol, id DESC);
CREATE INDEX IF NOT EXISTS binding_history_time_idx ON binding_history (observed_at);

-- The change stream (directory.atmx.subscribeBindings): one row per change, written in the
-- transaction that makes the change. seq comes from change_seq under a transaction-scoped
-- advisory lock, so seqs become visible in commit order (a reader never skips a lower seq
-- that commits later). Retention: ATMX_CHANGE_RETENTION.
CREATE SEQUENCE IF NOT EXISTS change_seq;
CREATE TABLE IF NOT EXISTS changes (
    seq    bigint PRIMARY KEY,
    time   timestamptz NOT NULL DEFAULT now(),
    did    text NOT NULL,
    kind   text NOT NULL,                          -- binding | account | handle
    protocol text,                                 -- of a binding change; NULL for account and handle
    body   jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_time_idx ON changes (time);

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

-- upgrade: what the active indexer last reported about each firehose connection, written every
-- few seconds (indexer/liveness.py) for processes that only read the database (atmx serve,
-- atmx status): the state shown is `idle`, not `lagging`, on a quiet but caught-up network.
CREATE TABLE IF NOT EXISTS firehose_status (
    upstream     text PRIMARY KEY,
    state        text NOT NULL,                    -- live | idle | lagging | disconnected
    connected    boolean NOT NULL,
    lag_seconds  float8 NOT NULL DEFAULT 0,        -- delay of received events not yet processed
    received_at  timestamptz,                      -- when the last event arrived (database clock)
    reported_at  timestamptz NOT NULL DEFAULT now()
);

-- Rejected events, kept for operators: one row per (did, kind, reason, detail), counted
-- (retention: ATMX_REJECTION_RETENTION).
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
-- upgrade from version 1: rejections were neither counted nor de-duplicated
ALTER TABLE rejections ADD COLUMN IF NOT EXISTS count integer NOT NULL DEFAULT 1;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE relname = 'rejections_dedup_idx') THEN
        DELETE FROM rejections r USING rejections o
        WHERE r.did = o.did AND r.kind = o.kind AND r.reason = o.reason
          AND md5(coalesce(r.detail, '')) = md5(coalesce(o.detail, '')) AND r.id < o.id;
        CREATE UNIQUE INDEX rejections_dedup_idx ON rejections (did, kind, reason, md5(coalesce(detail, '')));
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS rejections_at_idx ON rejections (at);

-- Repos whose index state must be re-fetched with proof (gap, #sync, new account, unreachable
-- identity). The gap-repair worker drains it.
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

INSERT INTO schema_meta (key, value) VALUES ('version', '2')
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
