-- `ferry exec` sessions in the audit trail: who (the claimed name beside the token), which
-- environment, the command as run (secrets masked), and how it ended. NULL for other
-- mutations; `exit_status` stays NULL while a session runs (or if ferry stopped during it).
ALTER TABLE audit ADD COLUMN user TEXT;
ALTER TABLE audit ADD COLUMN environment TEXT;
ALTER TABLE audit ADD COLUMN command TEXT;
ALTER TABLE audit ADD COLUMN exit_status INTEGER;
ALTER TABLE audit ADD COLUMN finished_at TEXT;
