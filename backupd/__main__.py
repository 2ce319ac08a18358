"""``python -m backupd`` and the ``backupd`` console script."""

import gc

from backupd import malloc_tuning, quick_exit


def main() -> None:
    # Start-up imports backupd and its libraries and builds their models: hundreds of thousands
    # of objects, no garbage cycles, and the collector passed over them again and again (~60 ms
    # of a one-off command's ~550 ms of start-up CPU). The CLI's callback, which every command
    # passes through once the CLI is imported, turns it back on (cli.app._options).
    gc.disable()
    malloc_tuning.tune()  # before any pipeline thread allocates
    quick_exit.arm()  # first: its handler runs after every other one
    from backupd.cli import run

    run()


if __name__ == "__main__":
    main()
