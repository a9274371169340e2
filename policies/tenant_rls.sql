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
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN
        SELECT c.table_name FROM information_schema.columns c
        JOIN information_schema.tables USING (table_schema, table_name)
        WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id' AND table_type = 'BASE TABLE'
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %I', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I
                 USING (tenant_id = NULLIF(current_setting(''app.current_tenant'', true), '''')::uuid)
                 WITH CHECK (tenant_id = NULLIF(current_setting(''app.current_tenant'', true), '''')::uuid)',
            t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO indigo_app', t);
    END LOOP;
END $$;
