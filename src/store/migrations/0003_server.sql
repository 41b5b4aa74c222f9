-- Server surface: API tokens, webhook deliveries, the audit trail of mutations.

-- API tokens. Only a SHA-256 of the secret is kept; the secret is shown once at creation.
CREATE TABLE tokens (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    -- 1: may read but not change anything.
    read_only    INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;

-- Accepted webhook deliveries and what each triggered. A delivery id is acted on once.
CREATE TABLE deliveries (
    id          INTEGER PRIMARY KEY,
    provider    TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event       TEXT NOT NULL,
    git_ref     TEXT,
    commit_sha  TEXT,
    received_at TEXT NOT NULL,
    -- What ferry did, for people: "deployment 12 to staging", "ignored: deleted branch".
    outcome     TEXT NOT NULL DEFAULT '',
    UNIQUE (provider, delivery_id)
);

-- Every API mutation: which token did what, and how it was answered.
CREATE TABLE audit (
    id     INTEGER PRIMARY KEY,
    at     TEXT NOT NULL,
    token  TEXT NOT NULL,
    method TEXT NOT NULL,
    path   TEXT NOT NULL,
    status INTEGER NOT NULL
);
