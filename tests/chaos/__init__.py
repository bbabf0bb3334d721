"""The crash suite: worker processes killed at every phase of a tick (PostgreSQL)."""
