-- Tier changes: a workflow per plan change, and for the ones that move the
-- tenant between the pool and a silo, the move's progress (for the API, the
-- events and the console's progress bar).

ALTER TABLE workflows DROP CONSTRAINT workflows_kind_check;
ALTER TABLE workflows ADD CONSTRAINT workflows_kind_check
    CHECK (kind IN ('onboarding', 'offboarding', 'tier_change'));

CREATE TABLE tenant_moves (
    workflow_id     uuid PRIMARY KEY REFERENCES workflows (id),
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    from_isolation  text NOT NULL CHECK (from_isolation IN ('pool', 'silo')),
    to_isolation    text NOT NULL CHECK (to_isolation IN ('pool', 'silo')),
    source_database text NOT NULL,
    target_database text,
    phase           text NOT NULL CHECK (phase IN ('provisioning', 'copying', 'catching_up', 'cutting_over',
                                                   'switched', 'cleaning_up', 'done', 'rolled_back')),
    rows_total      bigint NOT NULL DEFAULT 0,
    rows_copied     bigint NOT NULL DEFAULT 0,
    -- Logged changes not yet applied to the target.
    lag             bigint NOT NULL DEFAULT 0,
    -- How long the tenant's writes were held at the switch.
    pause_ms        bigint,
    error           text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    switched_at     timestamptz,
    finished_at     timestamptz
);

CREATE INDEX tenant_moves_by_tenant ON tenant_moves (tenant_id, started_at DESC);
CREATE INDEX tenant_moves_active ON tenant_moves (started_at) WHERE finished_at IS NULL;
