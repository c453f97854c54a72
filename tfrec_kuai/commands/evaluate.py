"""``tfrec-kuai evaluate``: metrics.json and plots on the eval split (docs/design.md §9)."""
import os

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from tfrec_kuai.commands import positive_int
from tfrec_kuai.config import STAGES, VARIANTS
from tfrec_kuai.errors import InputError


def add_arguments(parser):
    parser.add_argument("--examples", required=True, help="examples folder (its eval split is used, or --split)")
    parser.add_argument("--split", choices=("eval", "train"), default="eval",
                        help="the split to evaluate on (train: examples the model was not trained on, e.g. the "
                             "daily loop's next day)")
    parser.add_argument("--model_dir", required=True, help="a model directory written by `tfrec-kuai train`")
    parser.add_argument("--output", required=True, help="folder for metrics.json and the PNG plots")
    parser.add_argument("--ground_truth", default=None,
                        help="the simulator's ground_truth.csv: adds the oracle's metrics under 'oracle'")
    parser.add_argument("--stage", choices=STAGES, default=None,
                        help="the stage --model_dir must hold (default: whichever it holds)")
    parser.add_argument("--variant", choices=VARIANTS, default=None,
                        help="the variant --model_dir must hold (default: whichever it holds)")
    parser.add_argument("--batch_size", type=positive_int, default=2048)
    parser.add_argument("--max_batches", type=positive_int, default=None, help="evaluate on the first N batches only")
    parser.add_argument("--attention_implementation", choices=("auto", "fused", "composite"), default="auto")


def run(args):
    from tfrec_kuai.evaluate import evaluation
    if args.ground_truth and not os.path.isfile(args.ground_truth):
        raise InputError(f"--ground_truth {args.ground_truth}: no such file")
    evaluation.evaluate(args.examples, args.model_dir, args.output, ground_truth=args.ground_truth,
                        batch_size=args.batch_size, max_batches=args.max_batches,
                        attention_implementation=args.attention_implementation, stage=args.stage,
                        variant=args.variant, split=args.split)
    return 0
