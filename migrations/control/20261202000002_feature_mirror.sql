-- What the AWS provider last wrote to the `indigo-tenant-features` table per
-- tenant, so that the mirror writes only what changed.
CREATE TABLE feature_mirror (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id),
    plan        text NOT NULL,
    lifecycle   text NOT NULL,
    mirrored_at timestamptz NOT NULL DEFAULT now()
);
