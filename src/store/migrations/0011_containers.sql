-- A container instance (runtime "docker" or "compose"): its container id. Its `pid` is 0 and
-- its `proc_start` NULL; a process instance has NULL here.
ALTER TABLE instances ADD COLUMN container TEXT;
