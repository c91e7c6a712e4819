-- SPEC §8: a webhook may be limited to `rate_limit` requests per second.
ALTER TABLE project_webhooks ADD COLUMN rate_limit INTEGER CHECK (rate_limit IS NULL OR rate_limit >= 1);

-- When the next request to a rate-limited webhook may go (unix µs). Workers
-- take slots from here in small batches, so the limit holds across processes.
CREATE TABLE webhook_rate_slots (
    webhook_id    TEXT PRIMARY KEY REFERENCES project_webhooks (id) ON DELETE CASCADE,
    next_slot_us  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
