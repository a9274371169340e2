-- A restore replaces a tenant's rows with a backup's in one transaction, which
-- also writes its mark here: a restore resumed after a crash finds the mark
-- and never replaces the rows a second time (the writes taken since would be
-- lost). The control plane's alone: the data plane has no grant on it.
CREATE TABLE restore_marks (
    workflow_id uuid PRIMARY KEY,
    tenant      uuid NOT NULL,
    backup_id   uuid NOT NULL,
    rows        bigint NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
