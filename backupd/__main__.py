from backupd.cli import run

run()
