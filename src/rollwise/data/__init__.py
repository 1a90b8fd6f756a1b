"""What must follow the code: database schema (migrations), later backups and caches."""
