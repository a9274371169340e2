-- A tenant's own cluster is served through a login of its own, a member of
-- indigo_app (tenant_login() in tenantdb/src/schema.rs). It is the data plane
-- as much as indigo_app is, so the releasing session is now recognised by
-- what the data plane never has instead: membership in the owner role (the
-- control plane's login; a superuser on a local server, RDS's master user on
-- a cluster). pg_has_role answers from the backend's membership cache; a
-- query of pg_auth_members here ran for every deleted row and grew with the
-- number of tenant logins on the server.
CREATE OR REPLACE FUNCTION move_capture() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    moving uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
BEGIN
    IF current_setting('indigo.move_releasing', true) = moving::text
       AND pg_has_role(session_user, 'indigo_owner', 'MEMBER') THEN
        RETURN NULL;
    END IF;
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
