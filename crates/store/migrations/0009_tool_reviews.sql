-- Tool review (`tool_updates = "review"`): every definition of a tool a virtual server has
-- held out for review, by its fingerprint (SHA-256 of the reviewed fields' canonical JSON),
-- and what an administrator decided. A tool is shown only with its one `approved` definition;
-- approving another makes the earlier one `superseded`.
CREATE TABLE tool_reviews (
    server TEXT NOT NULL,
    connector TEXT NOT NULL,
    tool TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    -- pending | approved | rejected | superseded
    status TEXT NOT NULL,
    -- The reviewed fields as canonical JSON, and what looked wrong in them (one per line).
    definition TEXT NOT NULL,
    flags TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    decided_at BIGINT,
    decided_by TEXT,
    PRIMARY KEY (server, connector, tool, fingerprint)
);

CREATE INDEX tool_reviews_status ON tool_reviews (status);

-- Moved by every decision, so that running gateways re-read the approved definitions.
CREATE TABLE tool_review_changes (
    id BIGINT PRIMARY KEY,
    serial BIGINT NOT NULL
);

INSERT INTO tool_review_changes (id, serial) VALUES (1, 0);
