-- Restores: a workflow that puts one tenant's rows back as one of its backups
-- holds them (controlplane/src/workflow/restore.rs).

ALTER TABLE workflows DROP CONSTRAINT workflows_kind_check;
ALTER TABLE workflows ADD CONSTRAINT workflows_kind_check
    CHECK (kind IN ('onboarding', 'offboarding', 'tier_change', 'restore'));
