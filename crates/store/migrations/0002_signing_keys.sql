-- The keys that sign access tokens. A key is published (in the JWKS) from `created_at`, signs
-- from `signs_from`, and is retired once no token it signed can still be valid.
-- `private_key` is the PKCS#8 document, base64 (to be sealed by the vault when it exists).
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    private_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    signs_from BIGINT NOT NULL,
    retired_at BIGINT
);
