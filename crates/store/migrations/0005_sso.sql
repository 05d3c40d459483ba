-- Sign-ins through an identity provider in progress: one row per redirect to the provider, found
-- by the SHA-256 of its `state`, spent at the callback (deleted), bound to the browser that
-- started it (the SHA-256 of a cookie) and to the provider. `verifier` is the PKCE code
-- verifier and `nonce` the ID token's expected nonce; `next` is the authorization request to
-- continue.
CREATE TABLE sso_requests (
    state_hash TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    browser_hash TEXT NOT NULL,
    nonce TEXT NOT NULL,
    verifier TEXT NOT NULL,
    next TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX sso_requests_expiry ON sso_requests (expires_at);
