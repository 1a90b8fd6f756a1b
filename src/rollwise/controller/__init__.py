"""The controller: plans, one journaled state machine, recovery, rollback."""
