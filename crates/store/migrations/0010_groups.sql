-- The groups a user belongs to (space-separated): a local user's as an administrator set them,
-- a member's as their identity provider's groups claim said at their latest sign-in or refresh.
-- `[groups.NAME]` in the config gives each group's members roles.
ALTER TABLE users ADD COLUMN groups TEXT NOT NULL DEFAULT '';
