"""Helpers the unit and integration tests share (importable: pytest puts tests/ on sys.path)."""
