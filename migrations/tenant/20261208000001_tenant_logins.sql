-- A tenant's own cluster is served through a login of its own, a member of
-- indigo_app (tenant_login() in tenantdb/src/schema.rs). It is the data
-- plane as much as indigo_app is, so a releasing session may not be it either.
CREATE OR REPLACE FUNCTION move_capture() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    moving uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
BEGIN
    IF current_setting('indigo.move_releasing', true) = moving::text
       AND session_user <> 'indigo_app'
       AND NOT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
                       WHERE m.roleid = 'indigo_app'::regrole AND r.rolname = session_user) THEN
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
