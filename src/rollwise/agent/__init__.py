"""The per-environment agent: embedded router, process supervisor and control socket."""
