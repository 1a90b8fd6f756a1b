-- the app also creates it (IF NOT EXISTS) when it runs without rollwise's migrations
CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, sku TEXT NOT NULL,
  qty INTEGER NOT NULL, version TEXT NOT NULL);
