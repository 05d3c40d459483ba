-- A counter that every withdrawal of a credential moves (a grant or an API key revoked, a user
-- disabled or enabled), in the same transaction as the change, so that gateways which keep
-- verified credentials in memory can tell, by reading one row, that they must check again.
CREATE TABLE credential_changes (
    id BIGINT PRIMARY KEY,
    serial BIGINT NOT NULL
);

INSERT INTO credential_changes (id, serial) VALUES (1, 0);

-- What each running gateway has seen of that counter, and when it last looked: so that the CLI,
-- having withdrawn a credential, can wait until every running gateway has noticed.
CREATE TABLE credential_checks (
    gateway TEXT PRIMARY KEY,
    serial BIGINT NOT NULL,
    checked_at BIGINT NOT NULL
);
