-- Separation of duties: token scopes, and the token beside every claimed name.

-- What a token may do: a comma-separated set of read, deploy, verify, approve, admin.
-- Tokens made before scopes keep what they could do: read-only ones read, the others all.
ALTER TABLE tokens ADD COLUMN scopes TEXT NOT NULL DEFAULT 'admin';
UPDATE tokens SET scopes = 'read' WHERE read_only = 1;

-- The token that started, approved or verified, beside the name it claimed
-- (`triggered_by`, `approved_by`, `verified_by`). NULL: no token (a webhook, ferry itself,
-- or a row from before this migration).
ALTER TABLE deployments ADD COLUMN triggered_token TEXT;
ALTER TABLE deployments ADD COLUMN approved_token TEXT;
ALTER TABLE verifications ADD COLUMN verified_token TEXT;
