"""Models built from a data module's info (see docs/architecture.md section 2)."""
