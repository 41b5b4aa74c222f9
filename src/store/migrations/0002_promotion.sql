-- Promotion and safety: gates, approvals, verifications, checks, backups, maintenance.

-- What a person said when asking: the reason of a forced deploy or of a rollback.
ALTER TABLE deployments ADD COLUMN note TEXT;
-- 1 when freeze windows were overridden with --force.
ALTER TABLE deployments ADD COLUMN forced INTEGER NOT NULL DEFAULT 0;
-- 1 when a rollback also restores the data backed up before the deploy it undoes.
ALTER TABLE deployments ADD COLUMN restore_data INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN approved_by TEXT;
ALTER TABLE deployments ADD COLUMN approved_at TEXT;

-- Why a manual lock was taken.
ALTER TABLE env_locks ADD COLUMN reason TEXT;

-- QA sign-offs: this version, at this commit and digest, was verified on this environment.
CREATE TABLE verifications (
    id            INTEGER PRIMARY KEY,
    environment   TEXT NOT NULL,
    version       TEXT NOT NULL,
    commit_sha    TEXT NOT NULL,
    release       TEXT NOT NULL,
    digest        TEXT NOT NULL,
    deployment_id INTEGER REFERENCES deployments (id),
    verified_by   TEXT NOT NULL,
    verified_at   TEXT NOT NULL
);
CREATE INDEX verifications_by_version ON verifications (version, environment);

-- Commit checks reported by CI; the newest report per (commit, name) counts.
CREATE TABLE checks (
    id            INTEGER PRIMARY KEY,
    commit_sha    TEXT NOT NULL,
    name          TEXT NOT NULL,
    status        TEXT NOT NULL,               -- success, failure, error, pending
    url           TEXT,
    reported_by   TEXT NOT NULL,
    reported_at   TEXT NOT NULL
);
CREATE INDEX checks_by_commit ON checks (commit_sha, name, id);

-- Data snapshots taken before a deploy started its new instance.
CREATE TABLE backups (
    id            INTEGER PRIMARY KEY,
    environment   TEXT NOT NULL,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id),
    release       TEXT NOT NULL,               -- the release being deployed; pruned with it
    file          TEXT NOT NULL,               -- the path inside the shared dir
    path          TEXT NOT NULL,               -- the snapshot
    method        TEXT NOT NULL,               -- sqlite (online backup API) or copy
    bytes         INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    pruned_at     TEXT
);
CREATE INDEX backups_by_deployment ON backups (deployment_id);

-- Environments in maintenance: the proxy answers 503 with this message.
CREATE TABLE maintenance (
    environment   TEXT PRIMARY KEY,
    message       TEXT NOT NULL,
    since         TEXT NOT NULL,
    set_by        TEXT NOT NULL
);
