// pybind11 binding of the feedback-weighted attention forward kernel: the same C++ core as the
// TF op, on NumPy arrays, for checks and tools that should not need TensorFlow.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "fwa_kernel.h"
#include "py_bindings.h"

namespace py = pybind11;

namespace tfrec_kuai {
namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

std::string ShapeString(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

void CheckShape(const py::array& a, const char* name, const std::vector<int64_t>& expected, const char* layout,
                const std::string& context) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(expected.size());
  for (size_t i = 0; ok && i < expected.size(); ++i) ok = a.shape(i) == expected[i];
  if (!ok) {
    std::string want = "(";
    for (size_t i = 0; i < expected.size(); ++i) want += (i ? ", " : "") + std::to_string(expected[i]);
    throw std::invalid_argument(std::string(name) + " has shape " + ShapeString(a) + " but " + want +
                                ") is required (" + layout + ", from " + context + ")");
  }
}

// Arrays are converted to C-contiguous float32 / int32 (copies only when needed); the GIL is
// released while the kernel runs, so Python threads can run several calls at once.
py::array_t<float> FwaForwardPy(CArray<float> query, CArray<float> keys, CArray<float> values, CArray<float> bias,
                                CArray<float> gate, CArray<int32_t> lengths, py::object scale) {
  if (query.ndim() != 3) throw std::invalid_argument("query must have rank 3 [B,H,D], got shape " + ShapeString(query));
  if (keys.ndim() != 4) throw std::invalid_argument("keys must have rank 4 [B,L,H,D], got shape " + ShapeString(keys));
  if (values.ndim() != 4) {
    throw std::invalid_argument("values must have rank 4 [B,L,H,Dv], got shape " + ShapeString(values));
  }
  FwaShape s;
  s.batch = query.shape(0);
  s.heads = query.shape(1);
  s.depth = query.shape(2);
  s.length = keys.shape(1);
  s.value_depth = values.shape(3);
  const std::string context = "query " + ShapeString(query) + " [B,H,D], keys " + ShapeString(keys) +
                              " [B,L,H,D], values " + ShapeString(values) + " [B,L,H,Dv]";
  CheckShape(keys, "keys", {s.batch, s.length, s.heads, s.depth}, "[B,L,H,D]", context);
  CheckShape(values, "values", {s.batch, s.length, s.heads, s.value_depth}, "[B,L,H,Dv]", context);
  CheckShape(bias, "bias", {s.batch, s.length, s.heads}, "[B,L,H]", context);
  CheckShape(gate, "gate", {s.batch, s.length, s.heads}, "[B,L,H]", context);
  CheckShape(lengths, "lengths", {s.batch}, "[B]", context);
  const std::string bad = FwaCheckLengths(lengths.data(), s.batch, s.length);
  if (!bad.empty()) throw std::invalid_argument(bad);

  FwaInputs in;
  in.shape = s;
  in.query = query.data();
  in.keys = keys.data();
  in.values = values.data();
  in.bias = bias.data();
  in.gate = gate.data();
  in.lengths = lengths.data();
  in.scale = scale.is_none() ? (s.depth > 0 ? 1.0f / std::sqrt(static_cast<float>(s.depth)) : 1.0f)
                             : scale.cast<float>();
  py::array_t<float> out(std::vector<py::ssize_t>{static_cast<py::ssize_t>(s.batch),
                                                  static_cast<py::ssize_t>(s.heads),
                                                  static_cast<py::ssize_t>(s.value_depth)});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    FwaForward(in, o, 0, s.batch * s.heads);
  }
  return out;
}

}  // namespace

void RegisterAttentionBindings(py::module_& m) {
  m.def("fwa_forward", &FwaForwardPy, py::arg("query"), py::arg("keys"), py::arg("values"), py::arg("bias"),
        py::arg("gate"), py::arg("lengths"), py::arg("scale") = py::none(),
        "Feedback-weighted attention forward (DESIGN.md section 7) on NumPy arrays: query [B,H,D], keys "
        "[B,L,H,D], values [B,L,H,Dv], bias/gate [B,L,H], lengths [B] int in [0, L]; scale None means "
        "1/sqrt(D). Returns float32 [B,H,Dv]. Raises ValueError on bad shapes or lengths. Releases the GIL.");
}

}  // namespace tfrec_kuai
