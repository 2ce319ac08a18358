"""Continuous archiving: base backups, WAL, and point-in-time recovery from them (issues 15
and 16). May import pipeline/ (the supervisor), storage/, manifest, naming; nothing under
pipeline/ or storage/ imports it.

``walnames``: WAL file names and LSN arithmetic; ``walstore``: the WAL archive as stored in
a Repository; ``receiver``/``archiver``: pg_receivewal under the supervisor, and what is
archived from its spool (docs/architecture.md, "The WAL archive").
"""
