"""``tfrec-kuai report``: the HTML report a user reads (figures as PNG beside it)."""
import argparse

from tfrec_kuai.commands import positive_int


def _named_dir(text):
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, path


def add_arguments(parser):
    parser.add_argument("--examples", required=True, help="examples folder (metadata + train split statistics)")
    parser.add_argument("--output", required=True, help="folder for index.html and its figures")
    parser.add_argument("--ranking_dir", default=None, help="trained ranking model (training curves)")
    parser.add_argument("--retrieval_dir", default=None, help="trained retrieval model (training curves)")
    parser.add_argument("--ranking_eval", action="append", default=[], type=_named_dir, metavar="NAME=DIR",
                        help="an evaluation folder of `tfrec-kuai evaluate` for a ranking model; repeat for "
                             "variants (the first is shown in detail)")
    parser.add_argument("--retrieval_eval", default=None, help="evaluation folder of the retrieval model")
    parser.add_argument("--benchmarks", default=None, metavar="FILE.md",
                        help="a Markdown file of benchmark tables to append, e.g. benchmarks/RESULTS.md (none by "
                             "default: the report is about this run)")
    parser.add_argument("--max_examples", type=positive_int, default=200_000, help="train examples read for statistics")
    parser.add_argument("--title", default="tfrec-kuai report")


def run(args):
    from tfrec_kuai.evaluate.report import build_report

    path = build_report(args.output, args.examples, ranking_dir=args.ranking_dir, retrieval_dir=args.retrieval_dir,
                        ranking_evals=dict(args.ranking_eval), retrieval_eval=args.retrieval_eval,
                        benchmarks_md=args.benchmarks, title=args.title, max_examples=args.max_examples)
    print(f"report: {path}")
    return 0
