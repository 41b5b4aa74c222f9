-- Notifications: the outbox (see docs/notifications.md). One row per notifier and event,
-- written before anything is sent. `state` is `pending` (not sent yet, or being retried),
-- `sent` or `failed`; `attempts`, `error` (the last one) and `answer` (the receiver's, cut) are
-- updated after each attempt; `link` is what a tracker returned (the issue's URL). `message` is
-- the message as it was when the event happened (JSON), so a retry or a resumed row sends what
-- was true then. Nothing secret is ever written here: no URL, token or password.
CREATE TABLE notifications (
    id          INTEGER PRIMARY KEY,
    notifier    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    event       TEXT NOT NULL,
    environment TEXT NOT NULL,
    deployment  INTEGER,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    answer      TEXT,
    error       TEXT,
    link        TEXT,
    message     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX notifications_queue ON notifications (notifier, state, id);
CREATE INDEX notifications_deployment ON notifications (deployment);
