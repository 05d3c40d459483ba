-- Identity assertions (ID-JAG) already exchanged, by issuer and `jti`, until they expire: each
-- is accepted once.
CREATE TABLE spent_assertions (
    issuer TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, jti)
);

CREATE INDEX spent_assertions_expiry ON spent_assertions (expires_at);
