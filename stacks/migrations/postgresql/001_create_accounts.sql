-- PostgreSQL (aws platform). The local platform's SQLite set is the *.sql
-- files one folder up; keep the two sets in step (same versions).
CREATE TABLE accounts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
