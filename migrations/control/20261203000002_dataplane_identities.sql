-- Data planes get identities of their own instead of an operator's or the
-- admin's token: role `dataplane` reaches routing, daily call counts and usage
-- intake only, and a silo tenant's dedicated data plane is bound to that
-- tenant (`tenant_id`), so it can neither read nor report for any other.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('dataplane', 'viewer', 'operator', 'admin'));
ALTER TABLE api_tokens ADD COLUMN tenant_id uuid REFERENCES tenants (id);
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_tenant_only_for_dataplanes
    CHECK (tenant_id IS NULL OR role = 'dataplane');
