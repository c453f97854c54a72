"""In-memory §6 batches for the model tests (no examples folder needed)."""
import numpy as np

from tfrec_kuai.schema import BINARY_LABELS

L = 8
VOCABS = {"user_id": list(range(0, 20)), "video_id": list(range(100, 160)), "author_id": list(range(0, 15)),
          "tag": list(range(0, 6))}


def make_batch(batch=16, history_length=L, seed=0, with_labels=True):
    """A random but well-formed batch of §6 features (raw ids, −1 history padding, nested labels)."""
    rng = np.random.default_rng(seed)
    video = rng.integers(100, 165, batch)          # a few ids outside the vocabulary on purpose
    f = {
        "user_id": rng.integers(0, 22, batch), "video_id": video, "author_id": video % 15,
        "tag": np.where(video % 7 == 0, -1, video % 6), "hour": rng.integers(0, 24, batch),
        "tab": rng.integers(0, 5, batch), "date": np.full(batch, 20220420), "time_ms": rng.integers(0, 10 ** 9, batch),
        "is_rand": rng.integers(0, 2, batch), "duration_s": rng.uniform(2, 200, batch).astype(np.float32),
    }
    lengths = rng.integers(0, history_length + 1, batch)
    lengths[0] = history_length
    lengths[1] = 0
    pos = np.arange(history_length)[None, :]
    valid = pos < lengths[:, None]
    hv = rng.integers(100, 160, (batch, history_length))
    f["hist_video_id"] = np.where(valid, hv, -1)
    f["hist_author_id"] = np.where(valid, hv % 15, -1)
    f["hist_tag"] = np.where(valid, hv % 6, -1)
    dur = rng.uniform(2, 200, (batch, history_length)).astype(np.float32)
    play = (dur * rng.uniform(0, 1.5, (batch, history_length))).astype(np.float32)
    f["hist_duration_s"] = np.where(valid, dur, 0).astype(np.float32)
    f["hist_play_s"] = np.where(valid, play, 0).astype(np.float32)
    f["hist_age_s"] = np.where(valid, np.cumsum(rng.uniform(1, 600, (batch, history_length)), 1), 0).astype(np.float32)
    f["hist_feedback"] = np.where(valid, feedback_bits(play, dur, rng), 0)
    f["hist_len"] = lengths
    if with_labels:
        d = f["duration_s"]
        play_t = (d * rng.uniform(0, 1.3, batch)).astype(np.float32)
        bits = feedback_bits(play_t, d, rng)
        for i, name in enumerate(BINARY_LABELS):
            f[f"label_{name}"] = (bits >> i) & 1
        f["label_watch_s"] = play_t
        f["label_watch_ratio"] = np.clip(play_t / d, 0, 5).astype(np.float32)
    return {k: np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v, np.int64)
            for k, v in f.items()}


def feedback_bits(play_s, duration_s, rng):
    """docs/design.md §4 label rules as §6 bits, plus random engagement flags."""
    p, d = np.asarray(play_s) * 1000, np.asarray(duration_s) * 1000
    skip = p < np.minimum(3000, d)
    valid = np.where(d <= 7000, p >= d, p > 7000)
    long = np.where(d <= 18000, p >= d, p >= 18000)
    complete = p >= d
    bits = skip * 1 + valid * 2 + long * 4 + complete * 8
    for i in range(4, 9):
        bits = bits + (rng.random(p.shape) < 0.1) * (1 << i)
    return bits.astype(np.int64)
