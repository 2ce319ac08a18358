"""Continuous archiving: base backups, WAL, and point-in-time recovery from them (issues 15
and 16). May import pipeline/ (the supervisor), storage/, manifest, naming; nothing under
pipeline/ or storage/ imports it."""
