"""``tfrec-kuai train``: Keras fit of the ranking or retrieval model (docs/design.md §9).

Re-running the same command after a kill resumes from ``<model_dir>/backup`` and ends where an
unbroken run ends; ``--restart`` throws the previous state away instead. ``--warm_start DIR``
starts from yesterday's model (continual training, ``tfrec_kuai.train.training``, *Warm start*);
it resumes and restarts the same way. ``--distribute parameter_server`` is run by every task of
the cluster: the chief trains, the worker and ps tasks serve (``tfrec_kuai.train.distribute``).
"""
import argparse

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

from tfrec_kuai.commands import non_negative_int, positive_float, positive_int
from tfrec_kuai.config import OPTIMIZERS, STAGES, VARIANTS
from tfrec_kuai.schema import VOCAB_FEATURES


def add_arguments(parser):
    parser.add_argument("--examples", required=True, help="examples folder written by beam_pipelines.build_examples")
    parser.add_argument("--model_dir", required=True, help="where config, vocabularies, weights and logs go")
    parser.add_argument("--stage", choices=STAGES, default="ranking")
    parser.add_argument("--variant", choices=VARIANTS, default=None, help="ablation (default: full)")
    parser.add_argument("--config", default=None, help="JSON/YAML config file (default: tfrec_kuai/configs/<stage>.json)")
    parser.add_argument("--epochs", type=positive_int, default=None)
    parser.add_argument("--batch_size", type=positive_int, default=None)
    parser.add_argument("--learning_rate", type=positive_float, default=None)
    parser.add_argument("--steps_per_epoch", type=positive_int, default=None)
    parser.add_argument("--max_train_examples", type=positive_int, default=None,
                        help="cap the examples per epoch (steps = cap / batch size)")
    parser.add_argument("--validation", choices=("last_train_day", "eval", "none"), default=None,
                        help="what early stopping watches (default: the last training day, held out)")
    parser.add_argument("--seed", type=non_negative_int, default=None)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                        help="adam (default) or lazy_adam: updates only the embedding rows a batch touched, "
                             "which a catalogue of millions of videos needs (tfrec_kuai/train/optimizers.py)")
    parser.add_argument("--attention_implementation", choices=("auto", "fused", "composite"), default=None)
    parser.add_argument("--warm_start", default=None, metavar="MODEL_DIR",
                        help="start from this finished model of the same stage, variant, architecture and L "
                             "(yesterday's): its weights, its vocabularies grown by the examples' new ids")
    for flag, what in (("--max_vocab_size", "keep at most N ids of FEATURE, the most frequent (default: all)"),
                       ("--min_count", "keep only ids of FEATURE seen at least N times in train (default 1)"),
                       ("--oov_buckets", "hash ids FEATURE's vocabulary lacks into N rows (default 1)")):
        parser.add_argument(flag, type=feature_values, default=None, metavar="FEATURE=N[,FEATURE=N...]",
                            help=f"{what}; FEATURE one of {', '.join(VOCAB_FEATURES)}; over the config file's "
                                 "values feature by feature (docs/data.md, Ids at scale)")
    parser.add_argument("--restart", action="store_true", help="delete model_dir first instead of resuming")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="Keras progress: 0 silent, 1 bar, 2 one line per epoch")
    parser.add_argument("--distribute", choices=("none", "mirrored", "multi_worker", "parameter_server"),
                        default="none", help="tf.distribute strategy; multi_worker / parameter_server read TF_CONFIG "
                                             "(see tfrec_kuai/train/distribute.py); under parameter_server a "
                                             "worker or ps task serves until stopped, the chief trains")
    parser.add_argument("--min_shard_bytes", type=positive_int, default=None,
                        help="parameter_server only: the smallest shard of a variable split over the ps tasks "
                             "(default 262144, 256 KiB; smaller variables stay whole)")


def feature_values(text):
    """``video_id=1000000,tag=64`` → ``{"video_id": 1000000, "tag": 64}``: one integer >= 1 per
    id feature (an argparse type, so a bad value is refused before anything is read)."""
    out = {}
    for item in text.split(","):
        feature, sep, value = item.strip().partition("=")
        if not sep or feature not in VOCAB_FEATURES:
            raise argparse.ArgumentTypeError(f"expected FEATURE=N with FEATURE one of {', '.join(VOCAB_FEATURES)}, "
                                             f"got {item.strip()!r}")
        try:
            out[feature] = positive_int(value.strip())
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(f"{feature}: {error}") from None
    return out


def run(args):
    from tfrec_kuai.train import distribute, training
    from tfrec_kuai.config import load_config
    from tfrec_kuai.errors import InputError
    if args.min_shard_bytes is not None and args.distribute != "parameter_server":
        raise InputError(f"--min_shard_bytes is for --distribute parameter_server, not {args.distribute}")
    if args.distribute == "parameter_server":
        distribute.check_parameter_server_cluster()
        if distribute.task()[0] in ("worker", "ps"):
            distribute.serve()   # before anything reads or writes the folders: only the chief does
            return 0
    try:
        config = load_config(args.config, args.stage)
    except FileNotFoundError:
        raise InputError(f"--config {args.config}: no such file") from None
    except ValueError as error:   # bad JSON / YAML, unknown keys
        raise InputError(f"--config {args.config}: {error}") from None
    m = config.model
    config = config.override(
        "model", stage=args.stage, variant=args.variant, attention_implementation=args.attention_implementation,
        **{field: {**getattr(m, field), **flags} for field, flags in (
            ("max_vocab_size", args.max_vocab_size), ("min_count", args.min_count),
            ("oov_buckets", args.oov_buckets)) if flags})
    config = config.override("train", epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=args.learning_rate, steps_per_epoch=args.steps_per_epoch,
                             max_train_examples=args.max_train_examples, validation=args.validation, seed=args.seed,
                             optimizer=args.optimizer)
    training.check_model_config(config)   # before --restart deletes anything
    if args.distribute == "parameter_server":
        training.check_parameter_server_run(config, args.warm_start)   # before --restart deletes anything
    if args.warm_start is not None:
        # Before --restart deletes anything: a refused warm start leaves model_dir as it was.
        from tfrec_kuai.data import examples
        metadata = examples.require_examples(args.examples, "train")
        training.check_warm_start(args.warm_start, args.model_dir, config, metadata["history_length"])
    if args.restart:
        training.clear_model_dir(args.model_dir)
    strategy = distribute.make_strategy(  # before any other TF op: multi-worker needs that
        args.distribute, args.min_shard_bytes or distribute.DEFAULT_MIN_SHARD_BYTES)
    history = training.train(args.examples, args.model_dir, config, verbose=args.verbose, strategy=strategy,
                             warm_start=args.warm_start)
    last = {k: v[-1] for k, v in history.items() if v}
    print("final epoch: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(last.items())))
    return 0
