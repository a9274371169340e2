-- The tenant's Personalize campaign (settings.personalize_campaign_arn) is
-- routed too: the data planes call it for the tenant's recommendations, so a
-- change of it is a new routing version like a change of plan or placement.
CREATE OR REPLACE FUNCTION tenants_bump_routing_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.plan, NEW.isolation, NEW.lifecycle, NEW.placement, NEW.settings->'personalize_campaign_arn')
       IS DISTINCT FROM (OLD.plan, OLD.isolation, OLD.lifecycle, OLD.placement, OLD.settings->'personalize_campaign_arn') THEN
        NEW.routing_version := nextval('routing_version_seq');
    END IF;
    RETURN NEW;
END $$;
