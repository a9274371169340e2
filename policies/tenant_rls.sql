-- Row-level security of the tenant schema. Applied after the tenant migrations
-- to the pool and to every silo, on every start (it is idempotent), so that a
-- policy edited here is the policy in force.
--
-- A row is visible and writable only when its tenant_id equals the transaction's
-- app.current_tenant, which the data plane sets from the verified token as the
-- first thing of every transaction. With no tenant set, NULLIF turns the empty
-- setting into NULL and nothing matches. FORCE binds the table owner too.

-- Every table with a tenant_id column is covered, so a new table cannot be
-- forgotten here.
--
-- Nothing that is already as wanted is altered: this runs at every start
-- against a live pool, and DDL on its tables would make storefront writes wait
-- (or deadlock with them).
DO $$
DECLARE
    t text;
    isolation text := 'tenant_id = NULLIF(current_setting(''app.current_tenant'', true), '''')::uuid';
    wanted_qual text;
    wanted_check text;
BEGIN
    -- The policy's expressions as PostgreSQL prints them back, to compare with what is in force.
    CREATE TEMP TABLE rls_probe (tenant_id uuid);
    EXECUTE format('CREATE POLICY tenant_isolation ON rls_probe USING (%s) WITH CHECK (%s)', isolation, isolation);
    SELECT qual, with_check INTO wanted_qual, wanted_check
        FROM pg_policies WHERE tablename = 'rls_probe' AND schemaname = pg_my_temp_schema()::regnamespace::text;
    DROP TABLE rls_probe;

    FOR t IN
        SELECT c.table_name FROM information_schema.columns c
        JOIN information_schema.tables USING (table_schema, table_name)
        WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id' AND table_type = 'BASE TABLE'
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_class
                       WHERE oid = format('public.%I', t)::regclass AND relrowsecurity AND relforcerowsecurity) THEN
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
            EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        END IF;
        IF (SELECT count(*) FROM pg_policies WHERE schemaname = 'public' AND tablename = t) <> 1
           OR NOT EXISTS (SELECT 1 FROM pg_policies
                          WHERE schemaname = 'public' AND tablename = t AND policyname = 'tenant_isolation'
                            AND cmd = 'ALL' AND permissive = 'PERMISSIVE' AND roles = '{public}'
                            AND qual = wanted_qual AND with_check = wanted_check) THEN
            EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %I', t);
            EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (%s) WITH CHECK (%s)', t, isolation, isolation);
        END IF;
        IF NOT (has_table_privilege('indigo_app', format('public.%I', t), 'SELECT')
                AND has_table_privilege('indigo_app', format('public.%I', t), 'INSERT')
                AND has_table_privilege('indigo_app', format('public.%I', t), 'UPDATE')
                AND has_table_privilege('indigo_app', format('public.%I', t), 'DELETE')) THEN
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO indigo_app', t);
        END IF;
    END LOOP;
END $$;
