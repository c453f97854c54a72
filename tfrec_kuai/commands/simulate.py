"""``tfrec-kuai simulate``: a KuaiRand-format log with its ground truth (docs/design.md §9).

Kept free of TensorFlow so that generating a log is fast to start.
"""
import argparse
import datetime

from tfrec_kuai.commands import non_negative_int, positive_int
from tfrec_kuai.sim.simulator import SimParams, simulate


def _iso_date(text):
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None
    return text


def _share(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1], got {text!r}")
    return value


def add_arguments(parser):
    parser.add_argument("--output", required=True, help="folder for the logs, side tables and ground truth")
    parser.add_argument("--impressions", type=positive_int, default=100_000, help="log rows to write (1k .. 10M)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="same seed, same files")
    parser.add_argument("--users", type=non_negative_int, default=0, help="number of users (default impressions / 150)")
    parser.add_argument("--days", type=positive_int, default=14, help="days the log spans (from --start_date)")
    parser.add_argument("--start_date", type=_iso_date, default="2022-04-08", help="first day (Beijing time), as KuaiRand")
    parser.add_argument("--random_share", type=_share, default=0.10, help="share of is_rand=1 random exposures")
    parser.add_argument("--catalogue", choices=("kuairand_pure", "generated"), default="kuairand_pure",
                        help="real KuaiRand-Pure video/user tables or generated ones of the same shape")
    parser.add_argument("--videos", type=non_negative_int, default=0,
                        help="catalogue size: grow the catalogue to N videos drawn like it (its tags, durations "
                             "and authors with several videos), uploaded before the log; 0 = as it is")
    parser.add_argument("--policy_strength", type=float, default=0.5,
                        help="how strongly the logging policy follows the users' true interests")
    parser.add_argument("--author_affinity", type=float, default=0.0,
                        help="sd of the users' affinity for particular authors, a driver of likes / follows / "
                             "comments / forwards that skips and watch depth do not follow (0 = off)")
    parser.add_argument("--uploads_per_day", type=non_negative_int, default=0,
                        help="videos uploaded at the start of each day of the world after the log (tfrec-kuai "
                             "abtest / loop; the log itself shows only the catalogue), for --upload_days days")
    parser.add_argument("--upload_days", type=positive_int, default=30, help="world days that receive uploads")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def run(args):
    params = SimParams(impressions=args.impressions, seed=args.seed, users=args.users, days=args.days,
                       start_date=args.start_date, random_share=args.random_share, catalogue=args.catalogue,
                       videos=args.videos,
                       policy_strength=args.policy_strength, author_affinity_sd=args.author_affinity,
                       uploads_per_day=args.uploads_per_day, upload_days=args.upload_days)
    info = simulate(args.output, params, progress=not args.no_progress)
    print(f"wrote {args.impressions} impressions of {info['users']} users over {info['videos']} videos "
          f"to {args.output}: {info['label_rates']}")
    return 0
