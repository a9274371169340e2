-- The configured bootstrap admin token, once revoked (by its hash, so that a
-- new one configured in its place works again: the way back in if every
-- admin token is lost).
CREATE TABLE bootstrap_revocations (
    token_hash  bytea PRIMARY KEY,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    revoked_by  text NOT NULL
);
