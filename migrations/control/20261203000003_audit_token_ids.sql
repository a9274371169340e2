-- The audit log names the token that acted by its id as well as its name:
-- a name can be mistaken, an id cannot. NULL for the control plane's own
-- actors and for the configured bootstrap admin token, which have no row.
ALTER TABLE audit_log ADD COLUMN token_id uuid REFERENCES api_tokens (id);
