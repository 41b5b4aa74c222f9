-- A rollback asked to run the release command (`ferry rollback --run-release`).
ALTER TABLE deployments ADD COLUMN run_release INTEGER NOT NULL DEFAULT 0;
