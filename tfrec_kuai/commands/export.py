"""``tfrec-kuai export``: the trained models as a SavedModel in TF Serving's layout (docs/design.md §8)."""
from tfrec_kuai.commands import non_negative_int, positive_int


def add_arguments(parser):
    parser.add_argument("--ranking_dir", required=True, help="trained ranking model folder")
    parser.add_argument("--retrieval_dir", required=True, help="trained retrieval model folder")
    parser.add_argument("--examples", required=True, help="examples folder (its corpus/ is indexed, eval/ feeds warmup)")
    parser.add_argument("--export_base", required=True, help="writes <export_base>/<model_name>/<version>/")
    parser.add_argument("--portable", action="store_true",
                        help="composite attention: stock TF Serving loads it (default: the fused op, for serving/)")
    parser.add_argument("--xla", choices=("auto", "on", "off"), default="auto",
                        help="compile the rank path (encoder past the lookups, experts, heads) with XLA (auto: on "
                             "for the fused export, off for --portable, since stock TF Serving runs XLA only with "
                             "--xla_cpu_compilation_enabled)")
    parser.add_argument("--no_exclude_history", dest="exclude_history", action="store_false",
                        help="let recommend / retrieve return videos of the request's history (default: they "
                             "never do; extra ids are excluded through recommend_excluding / retrieve_excluding)")
    parser.add_argument("--model_name", default="kuai")
    parser.add_argument("--version", type=positive_int, default=None, help="default: one more than the newest version")
    parser.add_argument("--top_n", type=positive_int, default=20, help="videos returned by recommend")
    parser.add_argument("--retrieve_k", type=positive_int, default=100,
                        help="candidates retrieved (and ranked) by recommend")
    parser.add_argument("--warmup_examples", type=non_negative_int, default=None,
                        help="eval examples used for warmup requests (default: the XLA rank path's largest user "
                             "group, 8, so requests of 1, 4 and 8 users compile every group; 0: none)")


def run(args):
    import sys
    import time

    from tfrec_kuai.data import examples
    from tfrec_kuai.export import saved_model
    from tfrec_kuai.train import training

    # Refused before anything is built: each folder is what its flag says, and of the examples' L.
    history_length = examples.load_metadata(args.examples)["history_length"]
    examples.split_files(args.examples, "corpus")
    training.check_model_dir(args.ranking_dir, stage="ranking", history_length=history_length)
    training.check_model_dir(args.retrieval_dir, stage="retrieval", history_length=history_length)
    started = time.monotonic()
    variant = "portable (composite attention)" if args.portable else "fused (custom op)"
    print(f"exporting {variant}: ranking={args.ranking_dir} retrieval={args.retrieval_dir} ...", file=sys.stderr,
          flush=True)
    path = saved_model.export(args.ranking_dir, args.retrieval_dir, args.examples, args.export_base,
                         portable=args.portable, xla={"auto": None, "on": True, "off": False}[args.xla],
                         model_name=args.model_name, version=args.version, exclude_history=args.exclude_history,
                         top_n=args.top_n, retrieve_k=args.retrieve_k, warmup_examples=args.warmup_examples)
    from serving.model_config import write_serving_configs
    config, _ = write_serving_configs(args.export_base, args.model_name)
    print(f"exported in {time.monotonic() - started:.1f}s: {path} (server config: {config})", file=sys.stderr)
    print(path)
    return 0
