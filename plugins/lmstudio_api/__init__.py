"""LM Studio-compatible surface (placeholder until the hooks are wired)."""
