"""Talking to PostgreSQL as backupd itself: connections and advisory locks (``connection``),
databases as wholes (``databases``: read their properties, create one like another, drop one),
and the catalog comparisons of restore drills (``compare``)."""
