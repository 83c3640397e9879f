CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    total_cents INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX orders_account_id ON orders(account_id);
