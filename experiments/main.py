"""Command line: ``python -m experiments.train [--config NAME] [--FIELD VALUE ...]``.

Every config field is a flag (``--sparsity 0.9``, ``--sparsity=0.9``, ``--config.sparsity=0.9``,
``--data-dir DIR`` all work); bad input ends in one ``error:`` line and exit code 2.
"""

import argparse
import os
import sys
import time

from experiments import configs
from experiments.errors import UserError


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one `UserError` line (exit code 2 via `run_cli`)."""

    def error(self, message):  # one line instead of usage + error
        raise UserError(message)


def _parse_value(field: str, text: str, default):
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            items = [t for t in text.replace("(", "").replace(")", "").split(",") if t.strip()]
            kind = type(default[0]) if default else (float if "." in text else int)
            return tuple(kind(t.strip()) for t in items)
        return text
    except ValueError:
        kind = type(default).__name__
        raise UserError(f"--{field}: {text!r} is not a valid {kind}") from None


def apply_overrides(config, args: list[str]) -> None:
    """Sets ``--FIELD VALUE`` / ``--FIELD=VALUE`` / ``--config.FIELD=VALUE`` pairs on ``config``."""
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}; flags look like --sparsity 0.9")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise UserError(f"flag --{name} needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        field = name.removeprefix("config.").replace("-", "_")
        if field not in config or field == "name":
            raise UserError(
                f"unknown flag --{name} for config {config.name!r}; known fields: "
                + ", ".join(k for k in config if k != "name")
            )
        config[field] = _parse_value(field, value, config[field])


def build_config(name: str, overrides: list[str]):
    config = configs.get_config(name)
    apply_overrides(config, overrides)
    return config


def _train_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m experiments.train",
        description=(
            "Train dense and dynamic sparse networks (GGR, RigL, SET, SNFS, static). "
            "Any config field "
            "is a flag too: --method ggr,rigl --sparsity 0.98 --init uniform --num_epochs 5 ..."
        ),
    )
    p.add_argument(
        "--config",
        default=configs.DEFAULT,
        help=f"one of: {', '.join(configs.NAMES)} (default {configs.DEFAULT})",
    )
    p.add_argument("--workdir", default=None, help="output folder (default runs/<config>/<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files (<method>/tensorboard/) from metrics.jsonl",
    )
    p.add_argument("--show-config", action="store_true", help="print the config and exit")
    return p


def run_cli(fn) -> int:
    """Runs a command ``fn() -> exit code``; a `UserError` (and the machine's OSError, ^C, a
    closed pipe) ends in one ``error:`` line and its exit code instead of a traceback."""
    try:
        return fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("error: interrupted; continue with --resume", file=sys.stderr)
        return 130
    except OSError as e:  # the machine's, not the program's: a full disk, a read-only folder
        if e.errno is None:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"error: {e.strerror or e}{where}; the run's files written so far are kept, "
            "continue with --resume once this is fixed",
            file=sys.stderr,
        )
        return 2


def train_main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _train(sys.argv[1:] if argv is None else argv))


def check_workdir(workdir: str) -> None:
    """Raises `UserError` unless ``workdir`` exists as a writable folder or can be created."""
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if not os.path.isdir(path):
        raise UserError(
            f"workdir {workdir}: {path} is a file, not a folder; choose another --workdir"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"workdir {workdir}: {path} is not writable; choose another --workdir")


def _train(argv: list[str]) -> int:
    parser = _train_parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        return 0
    args, rest = parser.parse_known_args(argv)
    config = build_config(args.config, rest)
    if args.show_config:
        print(config)
        return 0
    if args.resume and not args.workdir:
        raise UserError("--resume needs --workdir (the folder of the run to continue)")
    workdir = args.workdir or os.path.join("runs", config.name, time.strftime("%Y%m%d-%H%M%S"))
    if args.resume and not os.path.isdir(workdir):
        raise UserError(f"--resume: workdir {workdir} does not exist")
    check_workdir(workdir)

    import jax

    from experiments import methods, report, training  # heavy imports after the cheap checks

    methods.check(config)
    n = jax.device_count()
    print(
        f"config {config.name}: {config.dataset}/{config.model}, methods {config.method}, "
        f"init {config.init}, sparsity {config.sparsity:g}; {n} {jax.default_backend()} "
        f"device{'s' if n > 1 else ''}; workdir {workdir}",
        flush=True,
    )
    start = time.time()
    results = training.train_methods(
        config, workdir, resume=args.resume, progress=not args.no_progress
    )
    if args.tensorboard:
        from experiments import tensorboard

        tensorboard.export_workdir(workdir)
    print()
    print(report.results_table(results))
    print()
    print(
        f"wrote {workdir}/results.md, density_over_time.png, accuracy.png and per-method "
        f"metrics.jsonl + checkpoints ({time.time() - start:.1f} s)"
    )
    return 0
