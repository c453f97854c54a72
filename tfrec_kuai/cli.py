"""The ``tfrec-kuai`` command line: one sub-command per step of docs/design.md §9.

Each sub-command lives in its own module under ``tfrec_kuai.commands`` exposing
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported lazily so that
``tfrec-kuai simulate`` does not pay for importing TensorFlow.

A misuse gets one line and exit status 2, never a traceback: a bad flag value is refused by
argparse (``tfrec-kuai train: error: argument --epochs: ...``), and an input the command cannot
use (a folder without examples, a model of another kind, ...) raises
``tfrec_kuai.errors.InputError``, printed the same way. TensorFlow's C++ start-up notices are
filtered out unless ``--verbose`` is given or ``TF_CPP_MIN_LOG_LEVEL`` is set
(``tfrec_kuai.quiet``).
"""
import argparse
import importlib
import sys

import tfrec_kuai  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tfrec_kuai.errors import InputError

COMMANDS = {
    "simulate": ("tfrec_kuai.commands.simulate", "write a KuaiRand-format log with ground truth", False),
    "train": ("tfrec_kuai.commands.train", "train the ranking or retrieval model with Keras fit", True),
    "evaluate": ("tfrec_kuai.commands.evaluate", "metrics.json and plots for a trained model", True),
    "export": ("tfrec_kuai.commands.export", "SavedModels in TF Serving layout", True),
    "report": ("tfrec_kuai.commands.report", "the HTML report a user reads", True),
    "abtest": ("tfrec_kuai.online.abtest_command", "an online A/B test of policies in the simulated world", True),
    "loop": ("tfrec_kuai.online.loop_command", "the daily loop: serve, build examples, train, hot-swap the next version",
             True),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (``prog: error: message``) and exit status 2: the usage
    block stays behind ``--help``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    parser = OneLineParser(prog="tfrec-kuai", description=__doc__.splitlines()[0])
    # Its own dest: ``train --verbose N`` (Keras progress) is another flag.
    parser.add_argument("--verbose", action="store_true", dest="tf_verbose",
                        help="keep TensorFlow's C++ start-up log (oneDNN, CUDA notices) on stderr")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, (module_name, help_text, _) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text)
        sub.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            sub.set_defaults(_missing=f"'{name}' is not built yet in this checkout ({module_name} missing)")
            continue
        module.add_arguments(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    missing = getattr(args, "_missing", None)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    if COMMANDS[args.command][2]:
        from tfrec_kuai.quiet import quiet_tensorflow
        quiet_tensorflow(verbose=args.tf_verbose)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except InputError as error:
        print(f"tfrec-kuai {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
