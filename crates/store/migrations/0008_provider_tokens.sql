-- A member's refresh token at their identity provider, so that each refresh of ours asks the
-- provider again (crates/auth/src/seal.rs): sealed with a key derived from the secret that
-- holds it at that step (the browser's sign-in cookie, the authorization code, our refresh
-- token), all of which are stored only as hashes, so the store alone cannot read it. NULL:
-- none (a local user, or a provider that issues no refresh tokens). A sign-in session's is ''
-- once an authorization took it: the next authorization asks the provider for one of its own.
ALTER TABLE login_sessions ADD COLUMN provider_token TEXT;
ALTER TABLE oauth_codes ADD COLUMN provider_token TEXT;
ALTER TABLE oauth_refresh_tokens ADD COLUMN provider_token TEXT;
