"""``python -m backupd`` and the ``backupd`` console script."""

import gc


def main() -> None:
    # Start-up imports backupd and its libraries and builds their models: hundreds of thousands
    # of objects, no garbage cycles, and the collector passed over them again and again (~60 ms
    # of a one-off command's ~550 ms of start-up CPU). cli.app.bootstrap turns it back on once
    # the command has its settings, before any job runs (the daemon's included).
    gc.disable()
    from backupd.cli import run

    run()


if __name__ == "__main__":
    main()
