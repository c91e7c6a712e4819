-- events and webhook_logs become rowid tables (their text id stays the
-- primary key, kept unique by an index of its own).
--
-- Why: as WITHOUT ROWID tables, their rows lived in the primary-key tree
-- itself, and an event's row (its data, about 500 bytes) or a delivery's
-- (about 250) fills a page after a few inserts. Every full page was split by
-- rebalancing it with its neighbours, so a group commit of ten ingests wrote
-- about 28 pages to the WAL (two system calls each) and the splits cost the
-- writer 9 % of its instructions. A rowid table appends: a full last page
-- gets a new page beside it and nothing else moves. Secondary indexes also
-- point at an integer instead of repeating the 36-character id.
--
-- SQLite cannot change a table's kind in place: each table is built anew,
-- filled, and the old one dropped, children before parents, so that no
-- ON DELETE CASCADE fires (the old children are gone before their parent is
-- dropped), then renamed, which points the new tables' foreign keys at the
-- final names.

CREATE TABLE events_v4 (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    event_name  TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE webhook_logs_v4 (
    id               TEXT PRIMARY KEY,
    project_id       TEXT NOT NULL,
    event            TEXT NOT NULL,
    event_id         TEXT NOT NULL REFERENCES events_v4 (id) ON DELETE CASCADE,
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
    attempt_base     INTEGER NOT NULL DEFAULT 0
        CONSTRAINT webhook_logs_attempt_base CHECK (attempt_base >= 0 AND attempt_base <= attempts),
    kind             TEXT NOT NULL DEFAULT 'event'
        CONSTRAINT webhook_logs_kind CHECK (kind = 'event' OR kind = 'test'),
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK (status = 'pending' OR lease_token IS NULL)
) STRICT;

-- Unchanged but for its parent's name: small rows, kept WITHOUT ROWID.
CREATE TABLE delivery_attempts_v4 (
    delivery_id    TEXT NOT NULL REFERENCES webhook_logs_v4 (id) ON DELETE CASCADE,
    number         INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    response_code  INTEGER,
    error_class    TEXT,
    error          TEXT,
    response_body  TEXT,
    PRIMARY KEY (delivery_id, number)
) STRICT, WITHOUT ROWID;

-- In id order, which is creation order: rowids then follow the ids.
INSERT INTO events_v4 (id, project_id, event_name, data, created_at)
    SELECT id, project_id, event_name, data, created_at FROM events ORDER BY id;
INSERT INTO webhook_logs_v4 (id, project_id, event, event_id, webhook_id, target_url, status, response_code,
                             attempts, next_attempt_at, last_error, lease_token, created_at, updated_at,
                             attempt_base, kind)
    SELECT id, project_id, event, event_id, webhook_id, target_url, status, response_code,
           attempts, next_attempt_at, last_error, lease_token, created_at, updated_at, attempt_base, kind
    FROM webhook_logs ORDER BY id;
INSERT INTO delivery_attempts_v4 SELECT * FROM delivery_attempts;

DROP TABLE delivery_attempts;
DROP TABLE webhook_logs;
DROP TABLE events;

ALTER TABLE events_v4 RENAME TO events;
ALTER TABLE webhook_logs_v4 RENAME TO webhook_logs;
ALTER TABLE delivery_attempts_v4 RENAME TO delivery_attempts;

CREATE INDEX events_by_project ON events (project_id, id);
CREATE INDEX webhook_logs_due ON webhook_logs (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_logs_by_project ON webhook_logs (project_id, id);
CREATE INDEX webhook_logs_by_event ON webhook_logs (event_id);
