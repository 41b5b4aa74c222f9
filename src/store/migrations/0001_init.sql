-- Deployments: one row per requested deploy, whatever became of it.
CREATE TABLE deployments (
    id            INTEGER PRIMARY KEY,
    environment   TEXT NOT NULL,
    kind          TEXT NOT NULL,               -- deploy
    git_ref       TEXT NOT NULL,
    commit_sha    TEXT,
    version       TEXT,
    release       TEXT,                        -- <version>-<sha7>, the release dir's name
    digest        TEXT,
    state         TEXT NOT NULL,               -- queued, running, succeeded, failed, refused, interrupted
    step          TEXT,                        -- the step running or last run
    reason        TEXT,                        -- why it failed or was refused
    triggered_by  TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    finished_at   TEXT
);
CREATE INDEX deployments_by_env ON deployments (environment, id);

-- Steps of a deployment, in the order they ran.
CREATE TABLE steps (
    id            INTEGER PRIMARY KEY,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id),
    name          TEXT NOT NULL,
    state         TEXT NOT NULL,               -- running, ok, failed, skipped
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    output        TEXT NOT NULL DEFAULT ''     -- the tail of what it printed
);
CREATE INDEX steps_by_deployment ON steps (deployment_id, id);

-- Built releases per environment, in the order they were made.
CREATE TABLE releases (
    id            INTEGER PRIMARY KEY,
    environment   TEXT NOT NULL,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    commit_sha    TEXT NOT NULL,
    digest        TEXT,                        -- set once build and test passed
    status        TEXT NOT NULL,               -- preparing, built, good, failed, pruned
    created_at    TEXT NOT NULL,
    UNIQUE (environment, name)
);

-- One deployment per environment at a time.
CREATE TABLE env_locks (
    environment   TEXT PRIMARY KEY,
    deployment_id INTEGER REFERENCES deployments (id),
    kind          TEXT NOT NULL,               -- deploy, restore (ferry starting), manual
    holder        TEXT NOT NULL,
    since         TEXT NOT NULL
);

-- Every instance ferry started, so a restarted ferry knows what may still run.
CREATE TABLE instances (
    id            INTEGER PRIMARY KEY,
    environment   TEXT NOT NULL,
    deployment_id INTEGER REFERENCES deployments (id),
    release       TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    port          INTEGER NOT NULL,
    proc_start    INTEGER,                     -- start time from /proc/<pid>/stat, against pid reuse
    started_at    TEXT NOT NULL,
    stopped_at    TEXT
);
