"""backupd: PostgreSQL backup sidecar."""
__version__ = "0.1.0"
