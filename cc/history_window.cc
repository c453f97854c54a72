#include "history_window.h"

#include <algorithm>

namespace tfrec_kuai {

bool BuildHistoryWindows(const HistoryInputs& in, int64_t L, const HistoryOutputs& out) {
  const int64_t n = in.num_events;
  if (L < 1 || n < 0) return false;
  for (int64_t i = 1; i < n; ++i) {
    if (in.time_ms[i] < in.time_ms[i - 1]) return false;
  }
  int64_t first_same_time = 0;  // first index whose time equals time_ms[i]
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0 && in.time_ms[i] != in.time_ms[i - 1]) first_same_time = i;
    const int64_t len = std::min<int64_t>(L, first_same_time);
    const int64_t row = i * L;
    for (int64_t p = 0; p < len; ++p) {
      const int64_t j = first_same_time - 1 - p;  // newest first
      out.hist_video_id[row + p] = in.video_id[j];
      out.hist_author_id[row + p] = in.author_id[j];
      out.hist_tag[row + p] = in.tag[j];
      out.hist_play_s[row + p] = in.play_s[j];
      out.hist_duration_s[row + p] = in.duration_s[j];
      out.hist_age_s[row + p] = static_cast<float>(in.time_ms[i] - in.time_ms[j]) / 1000.0f;
      out.hist_feedback[row + p] = in.feedback[j];
    }
    for (int64_t p = len; p < L; ++p) {
      out.hist_video_id[row + p] = -1;
      out.hist_author_id[row + p] = -1;
      out.hist_tag[row + p] = -1;
      out.hist_play_s[row + p] = 0.0f;
      out.hist_duration_s[row + p] = 0.0f;
      out.hist_age_s[row + p] = 0.0f;
      out.hist_feedback[row + p] = 0;
    }
    out.hist_len[i] = len;
  }
  return true;
}

}  // namespace tfrec_kuai
