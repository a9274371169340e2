-- Idempotency keys belong to their caller: another caller's request with the
-- same key is a request of its own, never a replay of the first caller's
-- answer (nor refused because someone claimed the key first). Keys are kept
-- for a day (as Stripe does); the `housekeeping` job prunes older ones.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (actor, key);

-- The audit log names callers by their token's name, so a name means one
-- token: names are unique (whatever their case), also after revocation.
-- Tokens that share a name keep the oldest's; the others get their id's head.
UPDATE api_tokens t SET name = left(t.name, 90) || '-' || left(t.id::text, 8)
WHERE EXISTS (SELECT 1 FROM api_tokens o WHERE lower(o.name) = lower(t.name) AND o.created_at < t.created_at);
CREATE UNIQUE INDEX api_tokens_name_key ON api_tokens (lower(name));
