-- Per-tenant backups (reference design §11, controlplane/src/backups.rs): each
-- a consistent snapshot of one tenant's rows, written as an export bundle.
CREATE TABLE tenant_backups (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    started_at      timestamptz NOT NULL DEFAULT now(),
    -- Set once the bundle is complete and in place: a backup without it was
    -- cut short, is never listed or restored from, and is removed.
    taken_at        timestamptz,
    path            text NOT NULL,
    manifest_sha256 text,
    rows            bigint,
    removed_at      timestamptz
);
CREATE INDEX tenant_backups_newest ON tenant_backups (tenant_id, taken_at DESC) WHERE removed_at IS NULL;

-- Whether each tenant's newest backup was older than its plan's RPO at the
-- last run, so that falling behind and catching up are one event each.
CREATE TABLE backup_standing (
    tenant_id  uuid PRIMARY KEY REFERENCES tenants (id),
    behind     boolean NOT NULL,
    checked_at timestamptz NOT NULL
);
