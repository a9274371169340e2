-- Row-level security of the tenant schema. Applied after the tenant migrations
-- to the pool and to every silo, on every start (it is idempotent), so that a
-- policy edited here is the policy in force.
--
-- tenant_isolation, on every table with a tenant_id column (so a new table
-- cannot be forgotten here): a row is visible and writable only when its
-- tenant_id equals the transaction's app.current_tenant, which the data plane
-- sets from the verified token as the first thing of every transaction. With
-- no tenant set, NULLIF turns the empty setting into NULL and nothing matches.
-- FORCE binds the table owner too.
--
-- shopper_scope, restrictive, for the data plane's role on the tables of
-- shoppers' own data: a caller whose app.current_role is owner or staff sees
-- the whole store; any other caller (a `customer` token, or a transaction that
-- set no role) sees only the customer record whose subject is its
-- app.current_subject, that customer's orders and their items. The control
-- plane's own work (exports, moves, deletion) runs as the owner role, which
-- only tenant_isolation binds.
--
-- Nothing that is already as wanted is altered: this runs at every start
-- against a live pool, and DDL on its tables would make storefront writes wait
-- (or deadlock with them).
DO $$
DECLARE
    isolation text := 'tenant_id = NULLIF(current_setting(''app.current_tenant'', true), '''')::uuid';
    staff text := 'current_setting(''app.current_role'', true) = ANY (ARRAY[''owner'', ''staff''])';
    shopper text := 'NULLIF(current_setting(''app.current_subject'', true), '''')';
    w record;
    t text;
    printed_qual text;
    printed_check text;
BEGIN
    CREATE TEMP TABLE wanted_policies (
        tbl text, name text, permissive text, roles name[], expr text, qual text, with_check text
    ) ON COMMIT DROP;
    INSERT INTO wanted_policies (tbl, name, permissive, roles, expr)
        SELECT c.table_name, 'tenant_isolation', 'PERMISSIVE', '{public}', isolation
        FROM information_schema.columns c
        JOIN information_schema.tables USING (table_schema, table_name)
        WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id' AND table_type = 'BASE TABLE';
    INSERT INTO wanted_policies (tbl, name, permissive, roles, expr) VALUES
        ('customers', 'shopper_scope', 'RESTRICTIVE', '{indigo_app}',
         format('%s OR subject = %s', staff, shopper)),
        ('orders', 'shopper_scope', 'RESTRICTIVE', '{indigo_app}',
         format('%s OR customer_id IN (SELECT c.id FROM customers c WHERE c.subject = %s)', staff, shopper)),
        ('order_items', 'shopper_scope', 'RESTRICTIVE', '{indigo_app}',
         format('%s OR order_id IN (SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id '
                'WHERE c.subject = %s)', staff, shopper));

    -- Each policy's expressions as PostgreSQL prints them back, to compare with
    -- what is in force: made once on a throwaway copy of the table.
    FOR w IN SELECT * FROM wanted_policies LOOP
        EXECUTE format('CREATE TEMP TABLE rls_probe (LIKE public.%I)', w.tbl);
        EXECUTE format('CREATE POLICY probe ON rls_probe AS %s TO %s USING (%s) WITH CHECK (%s)',
                       w.permissive, array_to_string(w.roles, ', '), w.expr, w.expr);
        SELECT qual, with_check INTO printed_qual, printed_check
            FROM pg_policies WHERE tablename = 'rls_probe' AND schemaname = pg_my_temp_schema()::regnamespace::text;
        UPDATE wanted_policies SET qual = printed_qual, with_check = printed_check
            WHERE tbl = w.tbl AND name = w.name;
        DROP TABLE rls_probe;
    END LOOP;

    FOR t IN SELECT DISTINCT tbl FROM wanted_policies LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_class
                       WHERE oid = format('public.%I', t)::regclass AND relrowsecurity AND relforcerowsecurity) THEN
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
            EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        END IF;
        -- Policies that are not (or no longer) wanted as they stand go; missing ones come.
        FOR w IN
            SELECT p.policyname AS name FROM pg_policies p
            WHERE p.schemaname = 'public' AND p.tablename = t
              AND NOT EXISTS (SELECT 1 FROM wanted_policies v
                              WHERE v.tbl = t AND v.name = p.policyname AND p.cmd = 'ALL'
                                AND p.permissive = v.permissive AND p.roles = v.roles
                                AND p.qual = v.qual AND p.with_check = v.with_check)
        LOOP
            EXECUTE format('DROP POLICY %I ON %I', w.name, t);
        END LOOP;
        FOR w IN
            SELECT v.* FROM wanted_policies v
            WHERE v.tbl = t
              AND NOT EXISTS (SELECT 1 FROM pg_policies p
                              WHERE p.schemaname = 'public' AND p.tablename = t AND p.policyname = v.name)
        LOOP
            EXECUTE format('CREATE POLICY %I ON %I AS %s TO %s USING (%s) WITH CHECK (%s)',
                           w.name, t, w.permissive, array_to_string(w.roles, ', '), w.expr, w.expr);
        END LOOP;
        IF NOT (has_table_privilege('indigo_app', format('public.%I', t), 'SELECT')
                AND has_table_privilege('indigo_app', format('public.%I', t), 'INSERT')
                AND has_table_privilege('indigo_app', format('public.%I', t), 'UPDATE')
                AND has_table_privilege('indigo_app', format('public.%I', t), 'DELETE')) THEN
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO indigo_app', t);
        END IF;
    END LOOP;
    DROP TABLE wanted_policies;
END $$;
