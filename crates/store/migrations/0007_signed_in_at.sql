-- When a member last signed in through their identity provider (NULL for local users): what
-- bounds how long their sign-ins may be refreshed without asking the provider again.
ALTER TABLE users ADD COLUMN signed_in_at BIGINT;
