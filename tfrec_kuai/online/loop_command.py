"""``tfrec-kuai loop``: the command line of ``tfrec_kuai.online.loop`` (docs/design.md §10).

Re-running the same command on the same ``--output`` resumes a loop that was stopped (even by
``kill -9``) at its first unfinished step; ``--days`` may be raised to run more days.
"""
import argparse

from tfrec_kuai.commands import non_negative_int, positive_int
from tfrec_kuai.config import VARIANTS


def _reference(text):
    from tfrec_kuai.online.loop import REFERENCES

    if text not in REFERENCES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(REFERENCES)}, got {text!r}")
    return text


def add_arguments(parser):
    parser.add_argument("--output", required=True, help="the loop's folder (state.json, metrics.json, report/, ...)")
    parser.add_argument("--days", type=positive_int, required=True, help="days served after day 0")
    parser.add_argument("--variant", choices=VARIANTS, default="full", help="the model variant trained every day")
    parser.add_argument("--users", type=positive_int, default=1000, help="users served every day (drawn with the seed)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the world, the users and every draw")
    parser.add_argument("--history_length", type=positive_int, default=50, help="L: events per history window")
    parser.add_argument("--world", default=None,
                        help="start from this `tfrec-kuai simulate` folder instead of simulating day 0's log")
    parser.add_argument("--world_users", type=non_negative_int, default=0,
                        help="users of the simulated world (default: impressions / 150)")
    parser.add_argument("--impressions", type=positive_int, default=100_000, help="impressions of day 0's log")
    parser.add_argument("--world_days", type=positive_int, default=7, help="days that day 0's log spans")
    parser.add_argument("--uploads_per_day", type=non_negative_int, default=0,
                        help="new videos uploaded at the start of every served day (cold start; 0 = none); "
                             "only with the simulated day 0, not --world")
    parser.add_argument("--videos", type=non_negative_int, default=0,
                        help="catalogue size of the simulated world (tfrec-kuai simulate --videos; 0 = KuaiRand-Pure's "
                             "7,583); only with the simulated day 0, not --world")
    parser.add_argument("--config", default=None, help="training config file for both stages (tfrec-kuai train)")
    parser.add_argument("--page_size", type=positive_int, default=10, help="videos per request")
    parser.add_argument("--chunk_users", type=positive_int, default=1000, help="users driven together")
    parser.add_argument("--reference", action="append", type=_reference, default=[], metavar="POLICY",
                        help="also serve the same users each day with this policy (logging, oracle, random, or "
                             "frozen: the day-0 model, never retrained) on the same world seed; repeat the flag")
    parser.add_argument("--xla", choices=("auto", "on", "off"), default="off",
                        help="tfrec-kuai export --xla (default off: the day's examples have no eval split to "
                             "warm a compiled version up with, and a first request compiling would stall the swap)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")


def run(args):
    from tfrec_kuai.online.loop import run_loop

    options = {"variant": args.variant, "users": args.users, "seed": args.seed,
               "history_length": args.history_length, "world": args.world, "world_users": args.world_users,
               "impressions": args.impressions, "world_days": args.world_days, "config": args.config,
               "page_size": args.page_size, "chunk_users": args.chunk_users, "references": list(args.reference),
               "xla": args.xla, "uploads_per_day": args.uploads_per_day,
               "videos": args.videos}
    out = run_loop(args.output, args.days, options, progress=not args.no_progress)
    for d in out["days"]:
        print(f"day {d['day']}: version {d['model_version']}, watch {d['watch_time_per_user_day']:.1f} s/user-day, "
              f"skip {d['skip_rate']:.3f}, {d['impressions']} impressions, {d['failed_requests']} failed requests")
    print(f"wrote {args.output}/metrics.json and the page {args.output}/report/index.html")
    return 0
