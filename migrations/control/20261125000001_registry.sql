-- The control DB: the tenant registry, its audit trail and event stream, API
-- tokens and idempotency records. Tenant data lives elsewhere (pool and silos).

CREATE TABLE tenants (
    id              uuid PRIMARY KEY,
    slug            text NOT NULL UNIQUE
                    CHECK (slug ~ '^[a-z][a-z0-9-]{1,38}[a-z0-9]$'),
    name            text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    owner_email     text NOT NULL,
    settings        jsonb NOT NULL DEFAULT '{}'::jsonb,

    -- spec: what the operators want
    plan            text NOT NULL,
    isolation       text NOT NULL CHECK (isolation IN ('pool', 'silo')),
    lifecycle       text NOT NULL DEFAULT 'active'
                    CHECK (lifecycle IN ('active', 'suspended', 'deleted')),
    generation      bigint NOT NULL DEFAULT 1,

    -- status: what the control plane last observed
    phase               text NOT NULL DEFAULT 'pending'
                        CHECK (phase IN ('pending', 'provisioning', 'ready', 'degraded',
                                         'suspended', 'deleting', 'deleted', 'failed')),
    conditions          jsonb NOT NULL DEFAULT '[]'::jsonb,
    placement           jsonb,
    observed_generation bigint NOT NULL DEFAULT 0,
    last_reconciled_at  timestamptz,

    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tenants_plan_idx ON tenants (plan);
CREATE INDEX tenants_lifecycle_idx ON tenants (lifecycle);

-- Any change of the spec bumps the generation, whoever makes it, so that
-- "has status caught up?" is always observed_generation >= generation.
CREATE FUNCTION tenants_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.plan, NEW.isolation, NEW.lifecycle) IS DISTINCT FROM (OLD.plan, OLD.isolation, OLD.lifecycle) THEN
        NEW.generation := OLD.generation + 1;
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER tenants_generation BEFORE UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_bump_generation();

CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    -- sha256 of the secret; the secret itself is shown once and never stored
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Append-only: who changed what, when, from what to what, under which request.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    role        text NOT NULL,
    action      text NOT NULL,
    tenant_id   uuid REFERENCES tenants (id),
    request_id  text,
    before      jsonb,
    after       jsonb
);

CREATE INDEX audit_log_tenant_idx ON audit_log (tenant_id, id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP;
END $$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- What happened, for people (and the console) to follow by increasing id.
CREATE TABLE events (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid REFERENCES tenants (id),
    kind        text NOT NULL,
    message     text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_tenant_idx ON events (tenant_id, id);

-- A retried mutation with the same key replays the stored response instead of
-- acting twice. The row is written in the same transaction as the mutation.
CREATE TABLE idempotency_keys (
    key           text PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint   bytea NOT NULL,
    actor         text NOT NULL,
    status_code   smallint NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
