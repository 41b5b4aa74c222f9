-- Dashboard: health probes over time, and browser sessions.

-- Health probes of each environment's serving instance: the background watcher's, and the
-- post-deploy monitor's (with the deployment they watched). Pruned after a few days.
CREATE TABLE probes (
    id            INTEGER PRIMARY KEY,
    environment   TEXT NOT NULL,
    deployment_id INTEGER,
    at            TEXT NOT NULL,
    ok            INTEGER NOT NULL,
    response_ms   REAL NOT NULL,
    -- What failed, for a failed probe.
    detail        TEXT
);
CREATE INDEX probes_by_env ON probes (environment, at);
CREATE INDEX probes_by_deployment ON probes (deployment_id) WHERE deployment_id IS NOT NULL;

-- Signed-in dashboard sessions. Only a SHA-256 of the cookie's secret is kept; a session
-- ends with its token (revoking the token signs its sessions out).
CREATE TABLE sessions (
    hash       TEXT PRIMARY KEY,
    token_id   INTEGER NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
