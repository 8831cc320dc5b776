"""peffnet: practically efficient EfficientNets (group convolutions, proxy-normalized activations,
half-resolution training): train, fine-tune, evaluate, measure and export them.

Bad input ends with one line on stderr naming the problem and exit code 2, a file the disk refuses with one
line and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from peffnet.errors import ConfigError, RunFailure
from peffnet.files import WRITE_ERRNOS

# One module per subcommand; each defines ``register(subparsers)`` that sets ``func`` on its parser.
COMMAND_MODULES = (
    "peffnet.cli.models",
    "peffnet.cli.bench",
    "peffnet.cli.report",
    "peffnet.cli.roofline",
    "peffnet.cli.export",
    "peffnet.cli.predict",
    "peffnet.cli.profile",
    "peffnet.cli.resolutions",
    "peffnet.cli.finetune",
    "peffnet.cli.eval",
    "peffnet.cli.recipe",
    "peffnet.cli.train",
    "peffnet.cli.study",
    "peffnet.cli.data",
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``peffnet profile: error: ...``) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="peffnet", description=" ".join(__doc__.split("\n\n")[0].split()))
    from peffnet.version import __version__

    parser.add_argument("--version", action="version", version=f"peffnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    from peffnet.training import distributed

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"peffnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RunFailure as err:  # a file that cannot be written (peffnet.files), for every command
        print(f"peffnet {args.command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # what no writer of peffnet.files met: creating a folder, say
        if err.errno not in WRITE_ERRNOS:
            raise
        print(f"peffnet {args.command}: error: cannot write {err.filename or 'a file'}: {err.strerror}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"peffnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` etc.
        sys.stderr.close()
        return 0
    finally:
        distributed.cleanup()  # the process group (torchrun) is joined once per process and left here


if __name__ == "__main__":
    sys.exit(main())
