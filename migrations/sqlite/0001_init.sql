-- hookline schema, SQLite. Times are unix milliseconds (integers sort and
-- compare correctly; text timestamps with varying fraction digits do not).

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

-- Only the SHA-256 of a key is kept; the key itself is shown once.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    key_hash    BLOB NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;
CREATE INDEX api_keys_by_project ON api_keys (project_id);

-- Sealed with the vault key. expires_at is NULL for the current secret and the
-- end of the overlap window for a rotated-out one.
CREATE TABLE signing_secrets (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    sealed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER
) STRICT;
CREATE INDEX signing_secrets_by_project ON signing_secrets (project_id, seq);

CREATE TABLE project_webhooks (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    event       TEXT NOT NULL,
    target_url  TEXT NOT NULL,
    is_active   INTEGER NOT NULL CHECK (is_active = 0 OR is_active = 1),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX project_webhooks_by_project ON project_webhooks (project_id, id);
CREATE INDEX project_webhooks_active ON project_webhooks (project_id, event) WHERE is_active = 1;

-- Ids are time-ordered (UUIDv7), so the primary key also orders events by
-- age: pruning walks it, and no created_at index is needed. WITHOUT ROWID
-- keeps the rows in the primary-key tree itself instead of in a second one.
CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    event_name  TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX events_by_project ON events (project_id, id);

-- One row per delivery (an event going to one webhook): the queue and the log.
-- While pending, next_attempt_at says when it is due; a worker that claims it
-- sets lease_token and pushes next_attempt_at to the lease expiry, so a crashed
-- worker's deliveries become due again by themselves.
CREATE TABLE webhook_logs (
    id               TEXT PRIMARY KEY,
    project_id       TEXT NOT NULL,
    event            TEXT NOT NULL,
    event_id         TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    webhook_id       TEXT NOT NULL,
    target_url       TEXT NOT NULL,
    -- Written with OR rather than IN: SQLite builds a temporary table for an
    -- IN list in a CHECK on every insert and update.
    status           TEXT NOT NULL CHECK (status = 'pending' OR status = 'sent' OR status = 'failed'),
    response_code    INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,
    last_error       TEXT,
    lease_token      INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK (status = 'pending' OR lease_token IS NULL)
) STRICT, WITHOUT ROWID;
CREATE INDEX webhook_logs_due ON webhook_logs (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_logs_by_project ON webhook_logs (project_id, id);
CREATE INDEX webhook_logs_by_event ON webhook_logs (event_id);

-- Every attempt is kept, never overwritten.
CREATE TABLE delivery_attempts (
    delivery_id    TEXT NOT NULL REFERENCES webhook_logs (id) ON DELETE CASCADE,
    number         INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    response_code  INTEGER,
    error_class    TEXT,
    error          TEXT,
    response_body  TEXT,
    PRIMARY KEY (delivery_id, number)
) STRICT, WITHOUT ROWID;

-- Idempotency-Key: the first event created under a key, for 24 hours.
CREATE TABLE idempotency_keys (
    project_id   TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  BLOB NOT NULL,
    event_id     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (project_id, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
