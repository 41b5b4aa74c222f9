-- Process types (`[processes]`): which one an instance runs (`web`, routed by the proxy, or
-- another, such as `worker`) and which of its `count` instances it is (0-based).
ALTER TABLE instances ADD COLUMN process TEXT NOT NULL DEFAULT 'web';
ALTER TABLE instances ADD COLUMN replica INTEGER NOT NULL DEFAULT 0;
