-- Several servers: where each host of an environment with `servers` stands, one row per
-- environment and host (the server as written in `servers`). `serving` is the release it was
-- last seen serving; `wanted` the one it must serve (what the reconciler brings it to); `state`
-- is `ok` (it serves `wanted`), `unknown` (lost mid-call: it did not answer since) or
-- `failed` (it answered, and a step on it failed); `last_seen` when it last answered.
CREATE TABLE hosts (
    environment TEXT NOT NULL,
    host        TEXT NOT NULL,
    serving     TEXT,
    wanted      TEXT,
    state       TEXT NOT NULL,
    last_seen   TEXT,
    detail      TEXT,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (environment, host)
);
