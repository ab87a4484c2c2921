"""Runs ``python -m experiments.train`` in this process and kills it (SIGKILL) at a chosen point.

    python tests/_fault_worker.py --kill-at-write N [train flags...]
    python tests/_fault_worker.py --kill-at-batch N [train flags...]

``--kill-at-write N``: SIGKILL at the N-th file written through etils' ``epath`` (orbax writes
every checkpoint's metadata files that way), i.e. in the middle of a checkpoint write.
``--kill-at-batch N``: SIGKILL when the N-th training batch is drawn (two steps ahead of the
device, which is then anywhere inside a step).
Used by tests/test_fault_injection.py.
"""

import os
import signal
import sys


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    mode, value, rest = argv[0], argv[1], argv[2:]
    if mode == "--kill-at-write":
        from etils import epath

        left = [int(value)]
        write_text, write_bytes = epath.Path.write_text, epath.Path.write_bytes

        def counted(original):
            def write(self, *args, **kwargs):
                left[0] -= 1
                if left[0] <= 0:
                    _kill()
                return original(self, *args, **kwargs)

            return write

        epath.Path.write_text = counted(write_text)
        epath.Path.write_bytes = counted(write_bytes)
    elif mode == "--kill-at-batch":
        from experiments import data

        train_batches = data.train_batches

        def batches(*args, **kwargs):
            for i, batch in enumerate(train_batches(*args, **kwargs), start=1):
                if i >= int(value):
                    _kill()
                yield batch

        data.train_batches = batches
    else:
        raise SystemExit(f"unknown mode {mode}")
    from experiments import main as cli

    return cli.train_main(rest)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main(sys.argv[1:]))
