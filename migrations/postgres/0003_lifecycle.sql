-- Webhook lifecycle (SPEC §9): hookline disables dead endpoints, replays
-- deliveries with a fresh attempt budget, and sends test deliveries. The same
-- columns and rules as migrations/sqlite/0003_lifecycle.sql.

-- When the current run of failed attempts to this webhook began: set by the
-- first failed attempt after a success, cleared by a success, written in the
-- transaction that records the attempts. --disable-after is counted from it.
-- disabled_at and disabled_reason are set together when hookline disables a
-- webhook (a 410 Gone, or failures for longer than --disable-after); a webhook
-- disabled by hookline is inactive.
ALTER TABLE project_webhooks
    ADD COLUMN failing_since BIGINT,
    ADD COLUMN disabled_at BIGINT,
    ADD COLUMN disabled_reason TEXT,
    ADD CONSTRAINT project_webhooks_disabled_inactive CHECK (disabled_at IS NULL OR NOT is_active),
    ADD CONSTRAINT project_webhooks_disabled_together CHECK ((disabled_reason IS NULL) = (disabled_at IS NULL));

-- attempt_base: attempts made before the current attempt budget began; a
-- replay sets it to `attempts`, so the retry policy counts from there while the
-- attempts made before stay in the history, numbered on.
-- kind 'test': a test delivery (POST /v1/webhooks/{id}/test), which is sent
-- even when its webhook is disabled; 'event': every other delivery.
ALTER TABLE webhook_logs
    ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'event',
    ADD CONSTRAINT webhook_logs_attempt_base CHECK (attempt_base >= 0 AND attempt_base <= attempts),
    ADD CONSTRAINT webhook_logs_kind CHECK (kind IN ('event', 'test'));
