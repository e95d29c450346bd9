"""Examples of extending the project without editing it (importable from the repository root)."""
