-- A shopper (a storefront token with role `customer`) reaches only its own
-- customer record and orders. The record a shopper registers carries the
-- token's subject; the `shopper_scope` policies (policies/tenant_rls.sql)
-- compare it with the subject the data plane sets from the verified token.
-- Records that staff create for a customer have no subject: no shopper's.

ALTER TABLE customers ADD COLUMN subject text CHECK (length(subject) BETWEEN 1 AND 255);

-- One record per shopper and store; also the lookup of the shopper's own orders.
CREATE UNIQUE INDEX customers_by_subject ON customers (tenant_id, subject) WHERE subject IS NOT NULL;
