-- The tenant schema: the storefront's data, shared by the pool database and by
-- every silo database. Every table carries tenant_id, leads its indexes with it,
-- and is bound by row-level security (policies/tenant_rls.sql, applied after
-- these migrations).

-- array_to_string is only STABLE; over text[] with a fixed separator it is in
-- fact immutable, which a generated column requires.
CREATE FUNCTION tags_text(tags text[]) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN array_to_string(tags, ' ');

CREATE TABLE products (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 10000),
    price_minor  bigint NOT NULL CHECK (price_minor >= 0),
    currency     text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    category     text NOT NULL DEFAULT '' CHECK (length(category) <= 100),
    tags         text[] NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('draft', 'active', 'archived')),
    stock        integer NOT NULL DEFAULT 0 CHECK (stock >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    search       tsvector GENERATED ALWAYS AS (
                     setweight(to_tsvector('simple', name), 'A') ||
                     setweight(to_tsvector('simple', category), 'B') ||
                     setweight(to_tsvector('simple', tags_text(tags)), 'B') ||
                     setweight(to_tsvector('simple', description), 'C')
                 ) STORED,
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX products_by_created ON products (tenant_id, created_at DESC, id DESC);
CREATE INDEX products_by_category ON products (tenant_id, category);
CREATE INDEX products_search ON products USING gin (search);

CREATE TABLE customers (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    email       text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, email)
);

CREATE INDEX customers_by_created ON customers (tenant_id, created_at DESC, id DESC);

CREATE TABLE orders (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL,
    customer_id  uuid NOT NULL,
    status       text NOT NULL DEFAULT 'placed' CHECK (status IN ('placed', 'paid', 'shipped', 'cancelled')),
    total_minor  bigint NOT NULL CHECK (total_minor >= 0),
    currency     text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id)
);

CREATE INDEX orders_by_created ON orders (tenant_id, created_at DESC, id DESC);
CREATE INDEX orders_by_customer ON orders (tenant_id, customer_id);

CREATE TABLE order_items (
    tenant_id         uuid NOT NULL,
    order_id          uuid NOT NULL,
    line              integer NOT NULL CHECK (line >= 1),
    product_id        uuid NOT NULL,
    quantity          integer NOT NULL CHECK (quantity >= 1),
    unit_price_minor  bigint NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (tenant_id, order_id, line),
    FOREIGN KEY (tenant_id, order_id) REFERENCES orders (tenant_id, id),
    FOREIGN KEY (tenant_id, product_id) REFERENCES products (tenant_id, id)
);

CREATE INDEX order_items_by_product ON order_items (tenant_id, product_id);
