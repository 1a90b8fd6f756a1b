"""Project configuration: `rollwise.yaml` schema (config.schema), loading and error messages
(config.load). The package imports nothing itself: the quick `hosts run` path must not pay
for pydantic."""
