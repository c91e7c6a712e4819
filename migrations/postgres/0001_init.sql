-- hookline schema, PostgreSQL. The same tables, columns and rules as
-- migrations/sqlite/0001_init.sql. Times are unix milliseconds (BIGINT), as in
-- SQLite, so both backends compare and page them the same way.
--
-- Ids and other keys are COLLATE "C": pagination orders by id, and ids must
-- sort bytewise (time order, for UUIDv7) whatever the database's default
-- collation is.

CREATE TABLE projects (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Only the SHA-256 of a key is kept; the key itself is shown once.
CREATE TABLE api_keys (
    id          TEXT COLLATE "C" PRIMARY KEY,
    project_id  TEXT COLLATE "C" NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    key_hash    BYTEA NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX api_keys_by_project ON api_keys (project_id);

-- Sealed with the vault key. expires_at is NULL for the current secret and the
-- end of the overlap window for a rotated-out one.
CREATE TABLE signing_secrets (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  TEXT COLLATE "C" NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    sealed      BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT
);
CREATE INDEX signing_secrets_by_project ON signing_secrets (project_id, seq);

CREATE TABLE project_webhooks (
    id          TEXT COLLATE "C" PRIMARY KEY,
    project_id  TEXT COLLATE "C" NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    event       TEXT NOT NULL,
    target_url  TEXT NOT NULL,
    is_active   BOOLEAN NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX project_webhooks_by_project ON project_webhooks (project_id, id);
CREATE INDEX project_webhooks_active ON project_webhooks (project_id, event) WHERE is_active;

-- data is the compact JSON text that was validated and is signed: TEXT, not
-- JSONB, so the bytes sent are exactly the bytes accepted.
-- Ids are time-ordered (UUIDv7), so the primary key also orders events by
-- age: pruning walks it, and no created_at index is needed.
CREATE TABLE events (
    id          TEXT COLLATE "C" PRIMARY KEY,
    project_id  TEXT COLLATE "C" NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    event_name  TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX events_by_project ON events (project_id, id);

-- One row per delivery (an event going to one webhook): the queue and the log.
-- While pending, next_attempt_at says when it is due; a worker that claims it
-- sets lease_token and pushes next_attempt_at to the lease expiry, so a crashed
-- worker's deliveries become due again by themselves, for any live worker.
CREATE TABLE webhook_logs (
    id               TEXT COLLATE "C" PRIMARY KEY,
    project_id       TEXT COLLATE "C" NOT NULL,
    event            TEXT NOT NULL,
    event_id         TEXT COLLATE "C" NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    webhook_id       TEXT COLLATE "C" NOT NULL,
    target_url       TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    response_code    INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT,
    last_error       TEXT,
    lease_token      BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK (status = 'pending' OR lease_token IS NULL)
);
CREATE INDEX webhook_logs_due ON webhook_logs (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_logs_by_project ON webhook_logs (project_id, id);
CREATE INDEX webhook_logs_by_event ON webhook_logs (event_id);

-- Every attempt is kept, never overwritten.
CREATE TABLE delivery_attempts (
    delivery_id    TEXT COLLATE "C" NOT NULL REFERENCES webhook_logs (id) ON DELETE CASCADE,
    number         INTEGER NOT NULL,
    started_at     BIGINT NOT NULL,
    duration_ms    BIGINT NOT NULL,
    response_code  INTEGER,
    error_class    TEXT,
    error          TEXT,
    response_body  TEXT,
    PRIMARY KEY (delivery_id, number)
);

-- Idempotency-Key: the first event created under a key, for 24 hours.
CREATE TABLE idempotency_keys (
    project_id   TEXT COLLATE "C" NOT NULL,
    key          TEXT COLLATE "C" NOT NULL,
    fingerprint  BYTEA NOT NULL,
    event_id     TEXT COLLATE "C" NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (project_id, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
