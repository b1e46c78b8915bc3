"""Run the CLI in this process with a fault armed at a chosen point (for tests/test_faults.py).

    FAULT=SIGNAL:TARGET:N python tests/fault_driver.py extract lsun DB --out OUT

sends this process ``SIGNAL`` (KILL, INT, STOP) the ``N``-th time ``TARGET`` is called:
``replace`` (``os.replace``: checkpoints, the finish's renames and the marker), ``advance``
(``DatasetWriter.advance``: an item boundary), ``copy`` (the dedup stage's row copies) or
``checkpoint``. The signal is real: a KILL leaves exactly what a crash or the OOM killer
leaves; nothing of the tool's own code is changed.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def arm(spec: str) -> None:
    sig_name, target, n = spec.split(":")
    sig = getattr(signal, f"SIG{sig_name}")
    count = [0]

    def maybe_fire() -> None:
        count[0] += 1
        if count[0] == int(n):
            os.kill(os.getpid(), sig)

    def wrap(owner: object, name: str) -> None:
        real = getattr(owner, name)

        def fired(*args, **kwargs):
            maybe_fire()
            return real(*args, **kwargs)

        setattr(owner, name, fired)

    if target == "replace":
        wrap(os, "replace")
    else:
        from pipeline.dataset import DatasetWriter

        wrap(DatasetWriter, {"advance": "advance", "copy": "copy_many",
                             "checkpoint": "checkpoint"}[target])


if __name__ == "__main__":
    arm(os.environ["FAULT"])
    sys.argv = [str(ROOT / "cli.py"), *sys.argv[1:]]
    from cli import main

    main()
