-- The new instance's last output lines (redacted), kept with the step that judged it:
-- `health` when it failed there, `monitor` when it was rolled back. NULL elsewhere.
ALTER TABLE steps ADD COLUMN app_output TEXT;
