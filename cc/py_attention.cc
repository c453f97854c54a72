// pybind11 binding of the feedback-weighted attention forward kernel: the same C++ core as the
// TF op, on NumPy arrays, for checks and tools that should not need TensorFlow.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <thread>
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

// Validates the arrays (ValueError naming the input) and fills the kernel's view of them.
FwaInputs Gather(const CArray<float>& query, const CArray<float>& keys, const CArray<float>& values,
                 const CArray<float>& bias, const CArray<float>& gate, const CArray<int32_t>& lengths,
                 const py::object& scale) {
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
  return in;
}

// "auto" (or None): the instruction set the TF op uses too (FwaActiveIsa); "baseline" / "avx2":
// that copy of the kernels, a ValueError where this CPU cannot run it.
FwaIsa IsaByName(const std::string& name) {
  for (FwaIsa isa : {FwaIsa::kBaseline, FwaIsa::kAvx2}) {
    if (name == FwaIsaName(isa)) return isa;
  }
  throw std::invalid_argument("isa must be one of auto, baseline, avx2, got '" + name + "'");
}

FwaIsa PickIsa(const py::object& isa) {
  if (isa.is_none()) return FwaActiveIsa();
  const std::string name = isa.cast<std::string>();
  if (name == "auto") return FwaActiveIsa();
  const FwaIsa picked = IsaByName(name);
  if (!FwaIsaSupported(picked)) throw std::invalid_argument("isa " + name + " is not supported by this CPU");
  return picked;
}

py::array_t<float> NewArray(std::initializer_list<int64_t> dims) {
  std::vector<py::ssize_t> shape;
  for (int64_t d : dims) shape.push_back(static_cast<py::ssize_t>(d));
  return py::array_t<float>(shape);
}

// Runs fn(begin, end) over the B*H (b, h) units split into `num_threads` equal contiguous ranges.
// The split ignores row boundaries on purpose: the kernels must handle a range that starts or
// ends inside a row (TF's thread pool cuts ranges the same way), and this makes that testable.
template <typename Fn>
void RunUnits(int64_t units, int num_threads, Fn fn) {
  if (num_threads < 1) throw std::invalid_argument("num_threads must be >= 1");
  py::gil_scoped_release release;
  if (num_threads == 1 || units < 2) {
    fn(int64_t{0}, units);
    return;
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < num_threads; ++t) {
    const int64_t begin = units * t / num_threads, end = units * (t + 1) / num_threads;
    if (begin < end) threads.emplace_back(fn, begin, end);
  }
  for (auto& th : threads) th.join();
}

// Arrays are converted to C-contiguous float32 / int32 (copies only when needed); the GIL is
// released while the kernel runs, so Python threads can run several calls at once.
py::array_t<float> FwaForwardPy(CArray<float> query, CArray<float> keys, CArray<float> values, CArray<float> bias,
                                CArray<float> gate, CArray<int32_t> lengths, py::object scale, int num_threads,
                                py::object isa_name) {
  const FwaIsa isa = PickIsa(isa_name);
  const FwaInputs in = Gather(query, keys, values, bias, gate, lengths, scale);
  const FwaShape& s = in.shape;
  py::array_t<float> out = NewArray({s.batch, s.heads, s.value_depth});
  float* o = out.mutable_data();
  RunUnits(s.batch * s.heads, num_threads,
           [&in, o, isa](int64_t begin, int64_t end) { FwaForwardWith(isa, in, o, begin, end); });
  return out;
}

py::tuple FwaBackwardPy(CArray<float> grad, CArray<float> query, CArray<float> keys, CArray<float> values,
                        CArray<float> bias, CArray<float> gate, CArray<int32_t> lengths, py::object scale,
                        int num_threads, py::object isa_name) {
  const FwaIsa isa = PickIsa(isa_name);
  const FwaInputs in = Gather(query, keys, values, bias, gate, lengths, scale);
  const FwaShape& s = in.shape;
  CheckShape(grad, "grad", {s.batch, s.heads, s.value_depth}, "[B,H,Dv]", "the output shape");
  py::array_t<float> dq = NewArray({s.batch, s.heads, s.depth});
  py::array_t<float> dk = NewArray({s.batch, s.length, s.heads, s.depth});
  py::array_t<float> dv = NewArray({s.batch, s.length, s.heads, s.value_depth});
  py::array_t<float> dbias = NewArray({s.batch, s.length, s.heads});
  py::array_t<float> dgate = NewArray({s.batch, s.length, s.heads});
  FwaGradients g{dq.mutable_data(), dk.mutable_data(), dv.mutable_data(), dbias.mutable_data(),
                 dgate.mutable_data()};
  const float* go = grad.data();
  RunUnits(s.batch * s.heads, num_threads,
           [&in, go, &g, isa](int64_t begin, int64_t end) { FwaBackwardWith(isa, in, go, g, begin, end); });
  return py::make_tuple(dq, dk, dv, dbias, dgate);
}

}  // namespace

void RegisterAttentionBindings(py::module_& m) {
  m.def("fwa_forward", &FwaForwardPy, py::arg("query"), py::arg("keys"), py::arg("values"), py::arg("bias"),
        py::arg("gate"), py::arg("lengths"), py::arg("scale") = py::none(), py::arg("num_threads") = 1,
        py::arg("isa") = py::none(),
        "Feedback-weighted attention forward (docs/design.md section 7) on NumPy arrays: query [B,H,D], keys "
        "[B,L,H,D], values [B,L,H,Dv], bias/gate [B,L,H], lengths [B] int in [0, L]; scale None means "
        "1/sqrt(D). Returns float32 [B,H,Dv]. Raises ValueError on bad shapes or lengths. Releases the GIL; "
        "num_threads > 1 splits the (b, h) units over that many threads. isa None or 'auto' runs the kernels the "
        "TF op runs (fwa_isa()); 'baseline' or 'avx2' that copy (ValueError where the CPU lacks it).");
  m.def("fwa_backward", &FwaBackwardPy, py::arg("grad"), py::arg("query"), py::arg("keys"), py::arg("values"),
        py::arg("bias"), py::arg("gate"), py::arg("lengths"), py::arg("scale") = py::none(),
        py::arg("num_threads") = 1, py::arg("isa") = py::none(),
        "The fused backward kernel: given grad = d(loss)/d(output) [B,H,Dv], returns the gradients "
        "(dquery, dkeys, dvalues, dbias, dgate), zeros at padding. Same arguments and errors as fwa_forward.");
  m.def("fwa_isa", [] { return std::string(FwaIsaName(FwaActiveIsa())); },
        "The instruction set the kernels run with in this process: 'avx2' (AVX2 + FMA, where the CPU has both) "
        "or 'baseline' (x86-64-v2); the environment's TFREC_KUAI_FWA_ISA=baseline|avx2|auto overrides it.");
  m.def("fwa_isa_supported", [](const std::string& name) { return FwaIsaSupported(IsaByName(name)); },
        py::arg("isa"), "Whether this CPU can run that copy of the kernels ('baseline' or 'avx2').");
}

}  // namespace tfrec_kuai
