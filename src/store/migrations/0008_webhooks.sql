-- Webhooks act on a pushed commit once per environment, whatever the delivery id.
-- The `after` of the push that asked for a deployment (NULL for deployments not made by a push).
ALTER TABLE deployments ADD COLUMN pushed_sha TEXT;
CREATE INDEX deployments_pushed ON deployments (environment, git_ref, pushed_sha)
    WHERE pushed_sha IS NOT NULL;

-- GitLab's Idempotency-Key: the same on "Resend request", which brings a new event UUID.
ALTER TABLE deliveries ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX deliveries_idempotency ON deliveries (provider, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
