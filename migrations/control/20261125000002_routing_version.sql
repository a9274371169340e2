-- Each tenant's routing_version grows whenever something the data plane routes
-- on changes (plan, lifecycle, isolation, placement); the routing table's
-- version is the highest of them, so a data plane can ask "anything newer?".

CREATE SEQUENCE routing_version_seq;

ALTER TABLE tenants ADD COLUMN routing_version bigint NOT NULL DEFAULT nextval('routing_version_seq');

CREATE FUNCTION tenants_bump_routing_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.plan, NEW.isolation, NEW.lifecycle, NEW.placement)
       IS DISTINCT FROM (OLD.plan, OLD.isolation, OLD.lifecycle, OLD.placement) THEN
        NEW.routing_version := nextval('routing_version_seq');
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER tenants_routing_version BEFORE UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_bump_routing_version();

CREATE INDEX tenants_routing_version_idx ON tenants (routing_version);
