"""When a user closes the app: the leave model of the world as an environment (``sim/world.py``).

After every video of a visit the user leaves with

    P(leave) = sigmoid(base + skip_streak · consecutive skips
                       + visit_length · log1p(videos so far in the visit)
                       − satisfying · [the video was a long view])

so a feed that makes the user skip costs the watch time of the videos the user would have seen
next, as in a short-video app, and a satisfying view keeps the user a little longer. ``consecutive
skips`` is the same skip streak the behaviour model's context effect reads (capped the same way).
The defaults give visits of about the offline log's mean session length (12) under the logging
policy. A visit never exceeds ``max_videos`` (a bound on the harness, rarely reached).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tfrec_kuai.sim.behaviour import sigmoid


@dataclass
class LeaveParams:
    base: float = -2.9
    skip_streak: float = 0.45
    visit_length: float = 0.15
    satisfying: float = 0.7
    streak_cap: int = 4
    max_videos: int = 200
    # Visits per user-day: Poisson with the user's offline activity (impressions per day of the
    # offline log / its mean session length) times this factor.
    visits_scale: float = 1.0

    def to_dict(self):
        return asdict(self)


def leave_probability(params, streak, videos_in_visit, satisfying):
    """P(leave after a video) given the skip streak *after* it, the number of videos seen in the
    visit including it, and whether it was a satisfying (long) view."""
    streak = np.minimum(np.asarray(streak), params.streak_cap)
    return sigmoid(params.base + params.skip_streak * streak
                   + params.visit_length * np.log1p(np.asarray(videos_in_visit, np.float64))
                   - params.satisfying * np.asarray(satisfying, np.float64))
