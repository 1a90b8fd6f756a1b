"""rollwise's state store: tables, engine and schema upgrade (store.db), queries (store.repo).
The package itself imports no store library: the quick `hosts run` path reads HEAD."""

HEAD = "0007"  # the newest revision in migrations/versions (a unit test keeps it so)
URL_ENV = "ROLLWISE_DATABASE_URL"  # a store other than .rollwise/state.db
