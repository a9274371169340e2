-- The mover runs as the schema owner, no superuser, so it can no longer
-- release a moved tenant's old rows in `session_replication_role = replica`
-- (a superuser's setting; Aurora has no superuser). Instead its releasing
-- session names the tenant in `indigo.move_releasing`, and the capture trigger
-- lets that session's changes of that tenant's rows pass: not logged, and not
-- stopped by the closed fence, which stays up for every other session. The
-- data plane's login cannot use it (session_user is the login, whatever role
-- a SECURITY DEFINER function runs as).
CREATE OR REPLACE FUNCTION move_capture() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    moving uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
BEGIN
    IF current_setting('indigo.move_releasing', true) = moving::text AND session_user <> 'indigo_app' THEN
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
