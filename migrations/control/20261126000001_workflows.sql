-- Durable workflows (onboarding, offboarding, later tier changes): every step's
-- start, result and error is recorded here before the next one begins, so a
-- daemon that dies mid-way is resumed by whichever daemon looks next.

-- A tenant being onboarded is recorded `pending` and serves nothing until its
-- onboarding ends.
ALTER TABLE tenants DROP CONSTRAINT tenants_lifecycle_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_lifecycle_check
    CHECK (lifecycle IN ('pending', 'active', 'suspended', 'deleted'));

CREATE TABLE workflows (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('onboarding', 'offboarding')),
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    state            text NOT NULL DEFAULT 'running'
                     CHECK (state IN ('running', 'compensating', 'succeeded', 'failed', 'cancelled')),
    input            jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Part of every step's idempotency key: a retried workflow acts afresh.
    attempt          integer NOT NULL DEFAULT 1,
    error            text,
    cancel_requested boolean NOT NULL DEFAULT false,
    -- When a daemon should look at it next (retries back off).
    next_run_at      timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);

-- One workflow at a time acts on a tenant.
CREATE UNIQUE INDEX workflows_one_active_per_tenant ON workflows (tenant_id)
    WHERE state IN ('running', 'compensating');
CREATE INDEX workflows_due_idx ON workflows (next_run_at) WHERE state IN ('running', 'compensating');
CREATE INDEX workflows_tenant_idx ON workflows (tenant_id, created_at);

CREATE TABLE workflow_steps (
    workflow_id     uuid NOT NULL REFERENCES workflows (id),
    name            text NOT NULL,
    state           text NOT NULL CHECK (state IN ('running', 'retrying', 'succeeded', 'failed',
                                                   'compensating', 'compensated', 'compensation_failed')),
    attempts        integer NOT NULL DEFAULT 0,
    output          jsonb,
    error           text,
    next_attempt_at timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    PRIMARY KEY (workflow_id, name)
);

-- Daemons LISTEN here to pick up new or resumed workflows at once.
CREATE FUNCTION workflows_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IN ('running', 'compensating') THEN
        PERFORM pg_notify('indigo_workflows', NEW.id::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER workflows_notify AFTER INSERT OR UPDATE OF state, next_run_at, cancel_requested ON workflows
    FOR EACH ROW EXECUTE FUNCTION workflows_notify();

-- Mail to send; a step writes here in its own transaction and a sender delivers.
CREATE TABLE outbox_emails (
    id              uuid PRIMARY KEY,
    tenant_id       uuid REFERENCES tenants (id),
    -- The writing step's idempotency key: one email per step, however often it runs.
    idempotency_key text NOT NULL UNIQUE,
    to_address      text NOT NULL,
    subject         text NOT NULL,
    body            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    sent_at         timestamptz
);

CREATE INDEX outbox_emails_unsent_idx ON outbox_emails (created_at) WHERE sent_at IS NULL;

-- The tenant's account at the payment provider.
CREATE TABLE tenant_billing (
    tenant_id       uuid PRIMARY KEY REFERENCES tenants (id),
    customer_id     text NOT NULL,
    subscription_id text,
    price_id        text,
    status          text NOT NULL CHECK (status IN ('active', 'cancelled')),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
