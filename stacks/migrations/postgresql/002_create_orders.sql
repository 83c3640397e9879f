CREATE TABLE orders (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id),
    total_cents BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX orders_account_id ON orders(account_id);
