"""The ``tfrec-kuai`` command line: one sub-command per step of DESIGN.md §9.

Each sub-command lives in its own module under ``tfrec_kuai.commands`` exposing
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported lazily so that
``tfrec-kuai simulate`` does not pay for importing TensorFlow.
"""
import argparse
import importlib
import sys

import tfrec_kuai  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

COMMANDS = {
    "simulate": ("tfrec_kuai.commands.simulate", "write a KuaiRand-format log with ground truth"),
    "train": ("tfrec_kuai.commands.train", "train the ranking or retrieval model with Keras fit"),
    "evaluate": ("tfrec_kuai.commands.evaluate", "metrics.json and plots for a trained model"),
    "export": ("tfrec_kuai.commands.export", "SavedModels in TF Serving layout"),
    "report": ("tfrec_kuai.commands.report", "the HTML report a user reads"),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="tfrec-kuai", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
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
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
