"""Data modules: problems and data sets (see docs/architecture.md section 2)."""
