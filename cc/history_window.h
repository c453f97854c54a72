// History-window builder: for every event of one user (sorted by time), the user's strictly
// earlier events, newest first, truncated to L. Plain C++ (no TF / Python) so that the Beam job
// (through pybind11) and any other caller share one implementation.
#pragma once
#include <cstdint>

namespace tfrec_kuai {

struct HistoryInputs {
  int64_t num_events;          // N
  const int64_t* time_ms;      // [N], non-decreasing
  const int64_t* video_id;     // [N]
  const int64_t* author_id;    // [N]
  const int64_t* tag;          // [N]
  const float* play_s;         // [N]
  const float* duration_s;     // [N]
  const int64_t* feedback;     // [N] bit set of docs/design.md §6
};

struct HistoryOutputs {        // every array [N, L] row-major, except hist_len [N]
  int64_t* hist_video_id;      // -1 = padding
  int64_t* hist_author_id;     // -1 = padding
  int64_t* hist_tag;           // -1 = padding
  float* hist_play_s;          // 0 = padding
  float* hist_duration_s;      // 0 = padding
  float* hist_age_s;           // 0 = padding; (time of target - time of event) / 1000
  int64_t* hist_feedback;      // 0 = padding
  int64_t* hist_len;           // number of valid positions
};

// Returns false (and writes nothing) when time_ms is not sorted or L < 1.
// Events that share a timestamp never see each other: only strictly earlier events count.
bool BuildHistoryWindows(const HistoryInputs& in, int64_t history_length, const HistoryOutputs& out);

}  // namespace tfrec_kuai
