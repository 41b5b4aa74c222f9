-- Issue trackers (`[[notify]] kind = "github-issue" | "gitlab-issue"`): the issue a notifier
-- last opened for an environment's failures, one row per notifier and environment. `target` is
-- where it lives (the API and the repository or project as configured: a notifier pointed
-- elsewhere starts afresh); `number` is GitHub's number or GitLab's iid; `opened_by` the
-- deployment whose failure opened it; `last_deployment` the last one reported on it. `state`
-- is `open` (failing), `recovered` (a success was reported on it and it was left open) or
-- `closed` (ferry closed it). Whether people closed or deleted it is asked of the tracker.
CREATE TABLE notify_issues (
    notifier        TEXT NOT NULL,
    environment     TEXT NOT NULL,
    target          TEXT NOT NULL,
    number          INTEGER NOT NULL,
    url             TEXT NOT NULL,
    opened_by       INTEGER,
    last_deployment INTEGER,
    state           TEXT NOT NULL,
    opened_at       TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (notifier, environment)
);
