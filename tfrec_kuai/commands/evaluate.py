"""``tfrec-kuai evaluate``: metrics.json and plots on the eval split (DESIGN.md §9)."""
import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)


def add_arguments(parser):
    parser.add_argument("--examples", required=True, help="examples folder (its eval split is used)")
    parser.add_argument("--model_dir", required=True, help="a model directory written by `tfrec-kuai train`")
    parser.add_argument("--output", required=True, help="folder for metrics.json and the PNG plots")
    parser.add_argument("--ground_truth", default=None,
                        help="the simulator's ground_truth.csv: adds the oracle's metrics under 'oracle'")
    parser.add_argument("--batch_size", type=int, default=2048)
    parser.add_argument("--max_batches", type=int, default=None, help="evaluate on the first N batches only")
    parser.add_argument("--attention_implementation", choices=("auto", "fused", "composite"), default="auto")


def run(args):
    from tfrec_kuai import evaluation
    evaluation.evaluate(args.examples, args.model_dir, args.output, ground_truth=args.ground_truth,
                        batch_size=args.batch_size, max_batches=args.max_batches,
                        attention_implementation=args.attention_implementation)
    return 0
