-- A counter that every withdrawal of a credential moves (a grant or an API key revoked, a user
-- disabled or enabled), in the same transaction as the change, so that gateways which keep
-- verified credentials in memory can tell, by reading one row, that they must check again.
CREATE TABLE credential_changes (
    id BIGINT PRIMARY KEY,
    serial BIGINT NOT NULL
);

INSERT INTO credential_changes (id, serial) VALUES (1, 0);
