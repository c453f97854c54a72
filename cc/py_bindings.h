// Registration hooks of the pybind11 module `tfrec_kuai._native` (one per source file, so the
// attention bindings and the history-window bindings can evolve independently).
#pragma once
#include <pybind11/pybind11.h>

namespace tfrec_kuai {
void RegisterAttentionBindings(pybind11::module_& m);  // cc/py_attention.cc
void RegisterHistoryBindings(pybind11::module_& m);    // cc/py_history.cc
}  // namespace tfrec_kuai
