-- One row per billed request. The primary key is the request id: a retried insert of the
-- same request is ignored by the database, so nothing is billed twice.
CREATE TABLE usage_records (
    request_id    TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL,
    model         TEXT NOT NULL,       -- as answered: a cascade is "cascade"
    documents     BIGINT NOT NULL,     -- the billed unit
    tokens        BIGINT NOT NULL,
    cost_nano_usd BIGINT NOT NULL,     -- 1e-9 USD, integral so that sums are exact
    charges       JSONB NOT NULL,      -- [[documents, usd_per_1k_documents], ...]
    served_at     TIMESTAMPTZ NOT NULL
);

CREATE INDEX usage_records_key_time ON usage_records (key_id, served_at);
