-- Build and test commands running now, so a ferry that died mid-step can kill what it left
-- behind (the process group, if the pid still has the recorded start time). A row goes when
-- its command ends.
CREATE TABLE commands (
    id            INTEGER PRIMARY KEY,
    deployment_id INTEGER NOT NULL,
    pid           INTEGER NOT NULL,
    -- Start time of the process in clock ticks since boot (/proc/<pid>/stat field 22).
    proc_start    INTEGER NOT NULL,
    started_at    TEXT NOT NULL
);
