// The pybind11 module `tfrec_kuai._native`: NumPy access to the C++ core (no TensorFlow).
#include "py_bindings.h"

PYBIND11_MODULE(_native, m) {
  m.doc() = "tfrec-kuai native core: feedback-weighted attention kernels and the history-window builder";
  tfrec_kuai::RegisterAttentionBindings(m);
  tfrec_kuai::RegisterHistoryBindings(m);
}
