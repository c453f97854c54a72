// Feedback-weighted target attention (docs/design.md §7): the kernel core, plain C++17.
//
// No TensorFlow and no Python here, so the same code runs inside the TF op (cc/fwa_tf_op.cc) and
// behind the pybind11 module (cc/py_attention.cc), and can be tested under sanitizers alone.
//
// For every batch row b and head h, over the valid history l < lengths[b] only:
//   s_l = scale * <query[b,h,:], keys[b,l,h,:]> + bias[b,l,h]
//   p   = softmax(s)                                 (max-subtracted: stable for large logits)
//   out[b,h,:] = sum_l p_l * gate[b,l,h] * values[b,l,h,:]
// lengths[b] == 0 gives zeros. Positions l >= lengths[b] are never read, and their gradients
// are written as zeros.
//
// Layouts are dense row-major: query [B,H,D], keys [B,L,H,D], values [B,L,H,Dv], bias and
// gate [B,L,H], lengths [B], out [B,H,Dv]. The work is split over the flattened (b, h) index so
// that callers can run disjoint ranges on different threads: a range writes only its own (b, h)
// slices of every output.
#pragma once

#include <cstdint>
#include <string>

namespace tfrec_kuai {

struct FwaShape {
  int64_t batch = 0;        // B
  int64_t length = 0;       // L, the padded history length
  int64_t heads = 0;        // H
  int64_t depth = 0;        // D, query/key depth
  int64_t value_depth = 0;  // Dv
};

struct FwaInputs {
  FwaShape shape;
  const float* query = nullptr;
  const float* keys = nullptr;
  const float* values = nullptr;
  const float* bias = nullptr;
  const float* gate = nullptr;
  const int32_t* lengths = nullptr;
  float scale = 1.0f;
};

struct FwaGradients {
  float* query = nullptr;   // [B,H,D]
  float* keys = nullptr;    // [B,L,H,D]
  float* values = nullptr;  // [B,L,H,Dv]
  float* bias = nullptr;    // [B,L,H]
  float* gate = nullptr;    // [B,L,H]
};

// Empty when every lengths[b] is in [0, length]; otherwise a message naming the first bad entry.
// Callers must check this before running the kernels (the kernels also clamp, so a missed check
// can give a wrong answer but never an out-of-bounds access).
std::string FwaCheckLengths(const int32_t* lengths, int64_t batch, int64_t length);

// Rough cost of one (b, h) unit in cycles, for thread-pool sharding.
int64_t FwaForwardCostPerUnit(const FwaShape& s);
int64_t FwaBackwardCostPerUnit(const FwaShape& s);

// The instruction sets the kernels are compiled for: the x86-64-v2 baseline (SSE4.2), and AVX2
// with FMA (8-wide vectors, fused multiply-add). FwaForward / FwaBackward run the best one the
// CPU has, chosen once per process; TFREC_KUAI_FWA_ISA=baseline|avx2|auto in the environment
// overrides that (for comparisons; a value this CPU cannot run falls back to auto, with a line
// on stderr). The two agree to float32 rounding, not bit for bit (FMA rounds once).
enum class FwaIsa { kBaseline, kAvx2 };
bool FwaIsaSupported(FwaIsa isa);
const char* FwaIsaName(FwaIsa isa);  // "baseline", "avx2"
FwaIsa FwaActiveIsa();

// Forward for the flattened (b, h) units in [begin, end): writes out[b,h,:].
void FwaForward(const FwaInputs& in, float* out, int64_t begin, int64_t end);

// Fused backward for the units in [begin, end), given d(loss)/d(out) `grad_out` [B,H,Dv]:
// recomputes the softmax and writes every gradient slice of those units (zeros at padding).
void FwaBackward(const FwaInputs& in, const float* grad_out, const FwaGradients& grads, int64_t begin,
                 int64_t end);

// The same with a given instruction set (which must be FwaIsaSupported), for tests and benchmarks.
void FwaForwardWith(FwaIsa isa, const FwaInputs& in, float* out, int64_t begin, int64_t end);
void FwaBackwardWith(FwaIsa isa, const FwaInputs& in, const float* grad_out, const FwaGradients& grads,
                     int64_t begin, int64_t end);

}  // namespace tfrec_kuai
