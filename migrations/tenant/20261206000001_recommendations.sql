-- The built-in recommender (the local counterpart of Personalize): for each
-- pair of a tenant's products, in how many orders they were bought together;
-- a product paired with itself counts the orders that hold it (its
-- popularity, the fallback for a new customer). Derived from the tenant's own
-- orders by refresh_product_pairs() and read under row-level security like
-- every tenant table. No foreign keys: a pair outlives a deleted product
-- until the next refresh, and reads join the catalogue anyway.
CREATE TABLE product_pairs (
    tenant_id   uuid NOT NULL,
    product_id  uuid NOT NULL,
    other_id    uuid NOT NULL,
    orders      bigint NOT NULL CHECK (orders > 0),
    PRIMARY KEY (tenant_id, product_id, other_id)
);

-- When the tenant's pairs were last computed, and from how many orders.
CREATE TABLE recommender_state (
    tenant_id      uuid NOT NULL PRIMARY KEY,
    refreshed_at   timestamptz NOT NULL,
    orders_counted bigint NOT NULL
);

-- Recomputes the current tenant's pairs (app.current_tenant) from its orders,
-- whole, in the caller's transaction. Called by the data plane (on demand, as
-- staff, who see every order) and by the control plane's scheduled job (as
-- the schema owner). Runs with the caller's rights: row-level security keeps
-- it to the tenant.
CREATE FUNCTION refresh_product_pairs() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    tenant uuid := NULLIF(current_setting('app.current_tenant', true), '')::uuid;
    counted bigint;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'refresh_product_pairs needs app.current_tenant';
    END IF;
    -- One refresh of a tenant at a time; a second waits and then redoes it.
    PERFORM pg_advisory_xact_lock(hashtextextended('product_pairs:' || tenant::text, 0));
    DELETE FROM product_pairs WHERE tenant_id = tenant;
    INSERT INTO product_pairs (tenant_id, product_id, other_id, orders)
        SELECT tenant, a.product_id, b.product_id, count(DISTINCT a.order_id)
        FROM order_items a
        JOIN order_items b ON b.tenant_id = a.tenant_id AND b.order_id = a.order_id
        WHERE a.tenant_id = tenant
        GROUP BY a.product_id, b.product_id;
    SELECT count(*) INTO counted FROM orders WHERE tenant_id = tenant;
    INSERT INTO recommender_state (tenant_id, refreshed_at, orders_counted)
        VALUES (tenant, now(), counted)
        ON CONFLICT (tenant_id) DO UPDATE SET refreshed_at = EXCLUDED.refreshed_at,
                                              orders_counted = EXCLUDED.orders_counted;
    RETURN counted;
END $$;
