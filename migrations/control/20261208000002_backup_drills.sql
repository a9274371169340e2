-- The restore drill (controlplane/src/backups.rs): when each backup was last
-- restored into a scratch database and checked, and what was wrong if it was.
ALTER TABLE tenant_backups ADD COLUMN drilled_at timestamptz, ADD COLUMN drill_problem text;
