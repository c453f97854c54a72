// pybind11 binding of the history-window builder (used by beam_pipelines.build_examples).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "history_window.h"
#include "py_bindings.h"

namespace py = pybind11;

namespace tfrec_kuai {
namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
const T* CheckLength(const CArray<T>& a, int64_t n, const char* name) {
  if (a.ndim() != 1 || a.shape(0) != n) {
    throw std::invalid_argument(std::string(name) + " must be a 1-D array of length " + std::to_string(n));
  }
  return a.data();
}

py::dict BuildHistoryWindowsPy(CArray<int64_t> time_ms, CArray<int64_t> video_id, CArray<int64_t> author_id,
                               CArray<int64_t> tag, CArray<float> play_s, CArray<float> duration_s,
                               CArray<int64_t> feedback, int64_t history_length) {
  if (time_ms.ndim() != 1) throw std::invalid_argument("time_ms must be 1-D");
  if (history_length < 1) throw std::invalid_argument("history_length must be >= 1");
  const int64_t n = time_ms.shape(0);
  HistoryInputs in{n,
                   time_ms.data(),
                   CheckLength(video_id, n, "video_id"),
                   CheckLength(author_id, n, "author_id"),
                   CheckLength(tag, n, "tag"),
                   CheckLength(play_s, n, "play_s"),
                   CheckLength(duration_s, n, "duration_s"),
                   CheckLength(feedback, n, "feedback")};
  const std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(history_length)};
  py::array_t<int64_t> hist_video_id(shape), hist_author_id(shape), hist_tag(shape), hist_feedback(shape);
  py::array_t<float> hist_play_s(shape), hist_duration_s(shape), hist_age_s(shape);
  py::array_t<int64_t> hist_len(std::vector<py::ssize_t>{static_cast<py::ssize_t>(n)});
  HistoryOutputs out{hist_video_id.mutable_data(), hist_author_id.mutable_data(), hist_tag.mutable_data(),
                     hist_play_s.mutable_data(),   hist_duration_s.mutable_data(), hist_age_s.mutable_data(),
                     hist_feedback.mutable_data(), hist_len.mutable_data()};
  bool ok;
  {
    py::gil_scoped_release release;
    ok = BuildHistoryWindows(in, history_length, out);
  }
  if (!ok) throw std::invalid_argument("time_ms must be sorted in non-decreasing order");
  py::dict result;
  result["hist_video_id"] = hist_video_id;
  result["hist_author_id"] = hist_author_id;
  result["hist_tag"] = hist_tag;
  result["hist_play_s"] = hist_play_s;
  result["hist_duration_s"] = hist_duration_s;
  result["hist_age_s"] = hist_age_s;
  result["hist_feedback"] = hist_feedback;
  result["hist_len"] = hist_len;
  return result;
}

}  // namespace

void RegisterHistoryBindings(py::module_& m) {
  m.def("build_history_windows", &BuildHistoryWindowsPy, py::arg("time_ms"), py::arg("video_id"),
        py::arg("author_id"), py::arg("tag"), py::arg("play_s"), py::arg("duration_s"), py::arg("feedback"),
        py::arg("history_length"),
        "For each event of one user (sorted by time_ms), its strictly earlier events, newest first, padded "
        "to history_length. Returns a dict of hist_* arrays ([N, L]) and hist_len ([N]). Releases the GIL.");
}

}  // namespace tfrec_kuai
