-- Data planes wait for the routing table to change (a long poll on
-- `GET /v1/routing`) rather than polling it: every new routing version is
-- announced on channel `indigo_routing` when its transaction commits, and each
-- control-plane replica wakes the requests waiting on it. A tenant moved to
-- another database is routed there as soon as the switch commits.
CREATE FUNCTION tenants_announce_routing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('indigo_routing', NEW.routing_version::text);
    RETURN NULL;
END $$;

CREATE TRIGGER tenants_routing_added AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_announce_routing();

CREATE TRIGGER tenants_routing_changed AFTER UPDATE ON tenants
    FOR EACH ROW WHEN (NEW.routing_version IS DISTINCT FROM OLD.routing_version)
    EXECUTE FUNCTION tenants_announce_routing();

-- Where a moving tenant is going, for the routing table to name ahead of the
-- switch (`next_database_url`): data planes open a connection there while the
-- move catches up, so writes held through the switch do not also wait for a
-- new connection (TLS included) once it happens.
ALTER TABLE tenant_moves ADD COLUMN target_cluster text;
