"""Every setting backupd reads, in one place (see docs/configuration.md).

``model``: the Settings model; ``selection``: POSTGRES_DB as a set of databases;
``loading``: load_settings, which turns any problem into one line naming the variable.
"""

from backupd.settings.loading import ENV_NAMES, load_settings
from backupd.settings.model import COMPRESSION_LEVELS, Settings
from backupd.settings.selection import EVERY_DATABASE, DatabaseSelection, split_database_list

__all__ = ["COMPRESSION_LEVELS", "ENV_NAMES", "EVERY_DATABASE", "DatabaseSelection", "Settings",
           "load_settings", "split_database_list"]
