"""``tfrec-kuai abtest``: the command line of ``tfrec_kuai.online.abtest`` (docs/design.md §10).

TensorFlow is imported only when an arm runs a ``savedmodel:`` or ``served:`` policy.
"""
import argparse

from tfrec_kuai.commands import non_negative_int, positive_int
from tfrec_kuai.errors import InputError


def _arm(text):
    from tfrec_kuai.online.abtest import parse_arm

    try:
        return parse_arm(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser):
    parser.add_argument("--world", required=True, help="a `tfrec-kuai simulate` output folder to continue")
    parser.add_argument("--arm", action="append", type=_arm, required=True, metavar="NAME=POLICY",
                        help="an arm: POLICY is random, popular, logging, oracle, savedmodel:<export dir> (in-process) "
                             "or served:<export dir> / served:<model name> with --server (gRPC); "
                             "repeat the flag, the first arm is the control")
    parser.add_argument("--server", metavar="ADDRESS", default=None,
                        help="HOST:PORT of a running model server (python -m serving.server or "
                             "tensorflow_model_server) whose models served:<model name> arms call; without it "
                             "served:<export dir> arms get a server started on 127.0.0.1 for the run")
    parser.add_argument("--users", type=positive_int, default=1000, help="users drawn from the world")
    parser.add_argument("--days", type=positive_int, default=1, help="days served, from the day after the log")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="users, visits and every random draw")
    parser.add_argument("--output", required=True,
                        help="folder for metrics.json, the page (index.html and its plots) and the arms' logs")
    parser.add_argument("--paired", action="store_true",
                        help="every arm replays the same users with common random numbers (default: hash split)")
    parser.add_argument("--page_size", type=positive_int, default=10, help="videos per request")
    parser.add_argument("--chunk_users", type=positive_int, default=1000, help="users driven together")
    parser.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap replicates for the intervals")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")


def run(args):
    from tfrec_kuai.online.abtest import run_abtest

    out = run_abtest(args.world, args.arm, args.users, args.days, args.seed, args.output, paired=args.paired,
                     page_size=args.page_size, chunk_users=args.chunk_users, replicates=args.bootstrap,
                     progress=not args.no_progress, server=args.server)
    for name, m in out["arms"].items():
        lift = out["lift"].get(name, {}).get("watch_time_per_user_day")
        extra = "" if lift is None or lift["value"] is None else \
            f"  lift {lift['value']:+.1%} [{lift['low']:+.1%}, {lift['high']:+.1%}]"
        print(f"{name:>14}: watch {m['watch_time_per_user_day']:.1f} s/user-day, skip {m['skip_rate']:.3f}, "
              f"{m['impressions']} impressions{extra}")
    print(f"wrote {args.output}/metrics.json and the page {args.output}/index.html")
    return 0
