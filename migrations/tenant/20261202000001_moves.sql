-- The machinery of online moves between the pool and a silo
-- (controlplane/src/moves). While a tenant moves, triggers that the mover adds
-- for that tenant alone record every change of its rows here, so the mover can
-- catch the target up after copying; the fence holds and then refuses the
-- tenant's writes around the switch.
--
-- The tables name their tenant column `tenant`, not `tenant_id`: they are the
-- control plane's bookkeeping, not tenant data, and the app role has no grant
-- on them (the capture trigger writes them as the owner).

CREATE TABLE move_changes (
    id          bigserial PRIMARY KEY,
    tenant      uuid NOT NULL,
    table_name  text NOT NULL,
    -- The row before (UPDATE, DELETE) and after (INSERT, UPDATE) the change.
    old_image   jsonb,
    new_image   jsonb,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX move_changes_by_tenant ON move_changes (tenant, id);

-- On the target: the keys of the rows the catch-up wrote. The copy is verified
-- in full as it lands; at the switch only these rows are compared again, so
-- the write pause does not grow with the tenant's size.
CREATE TABLE move_touched (
    tenant     uuid NOT NULL,
    table_name text NOT NULL,
    key        jsonb NOT NULL,
    PRIMARY KEY (tenant, table_name, key)
);

CREATE TABLE move_fences (
    tenant     uuid PRIMARY KEY,
    -- NULL while the tenant's changes are captured; the target database once
    -- the tenant has been switched there, from when on its writes here fail.
    moved_to   text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every write of a moving tenant takes the tenant's move lock shared; the
-- mover takes it exclusively for the switch, so that new writes wait (held,
-- not refused) and the ones in flight drain. A write that was held until after
-- the switch finds the fence closed and fails with SQLSTATE IXM01, which the
-- data plane answers by retrying on the tenant's new database.
CREATE FUNCTION move_capture() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    moving uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('indigo:move:' || moving::text, 0));
    IF EXISTS (SELECT 1 FROM move_fences WHERE tenant = moving AND moved_to IS NOT NULL) THEN
        RAISE EXCEPTION 'tenant % has moved to another database', moving USING ERRCODE = 'IXM01';
    END IF;
    INSERT INTO move_changes (tenant, table_name, old_image, new_image)
    VALUES (moving, TG_TABLE_NAME,
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END $$;
