-- What the reconciler needs on each tenant: an operator's pause switch, the
-- diff it last acted on, and a wake-up call whenever the spec changes.

ALTER TABLE tenants
    ADD COLUMN reconcile_paused boolean NOT NULL DEFAULT false,
    ADD COLUMN last_diff jsonb;

-- Every replica's reconciler LISTENs here; the payload is the tenant id.
CREATE FUNCTION tenants_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT'
       OR NEW.generation IS DISTINCT FROM OLD.generation
       OR NEW.reconcile_paused IS DISTINCT FROM OLD.reconcile_paused THEN
        PERFORM pg_notify('indigo_tenant_changed', NEW.id::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_notify_change();
