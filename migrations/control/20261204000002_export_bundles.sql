-- Offboarding's export bundles (customers' names and emails in plain text):
-- where each was written and until when it is kept for hand-over. The
-- housekeeping job removes a bundle once its time is up and its workflow has
-- ended, and records that in the audit log; the deletion certificate names
-- the time.
CREATE TABLE IF NOT EXISTS export_bundles (
    workflow_id      uuid PRIMARY KEY REFERENCES workflows (id),
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    path             text NOT NULL,
    manifest_sha256  text NOT NULL,
    written_at       timestamptz NOT NULL DEFAULT now(),
    remove_after     timestamptz NOT NULL,
    removed_at       timestamptz
);

CREATE INDEX IF NOT EXISTS export_bundles_due_idx ON export_bundles (remove_after) WHERE removed_at IS NULL;
