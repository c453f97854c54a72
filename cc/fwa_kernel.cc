// Kernel core of the feedback-weighted attention (see fwa_kernel.h for the maths and layouts):
// the x86-64-v2 baseline copy of the kernels (cc/fwa_kernel_body.h), the checks and costs every
// caller shares, and the run-time choice between the baseline and the AVX2 + FMA copy
// (cc/fwa_kernel_avx2.cc).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <immintrin.h>

#define FWA_ISA_NAMESPACE isa_baseline
#include "fwa_kernel_body.h"
#undef FWA_ISA_NAMESPACE

namespace tfrec_kuai {

namespace isa_avx2 {  // cc/fwa_kernel_avx2.cc
void Forward(const FwaInputs& in, float* out, int64_t begin, int64_t end);
void Backward(const FwaInputs& in, const float* grad_out, const FwaGradients& grads, int64_t begin, int64_t end);
}  // namespace isa_avx2

std::string FwaCheckLengths(const int32_t* lengths, int64_t batch, int64_t length) {
  for (int64_t b = 0; b < batch; ++b) {
    if (lengths[b] < 0 || lengths[b] > length) {
      return "lengths[" + std::to_string(b) + "] = " + std::to_string(lengths[b]) + " is outside [0, L = " +
             std::to_string(length) + "]";
    }
  }
  return std::string();
}

int64_t FwaForwardCostPerUnit(const FwaShape& s) {
  // ~2 flops per key and value element plus an exp (~20 cycles) per position.
  return std::max<int64_t>(1, s.length * (2 * s.depth + 2 * s.value_depth + 24));
}

int64_t FwaBackwardCostPerUnit(const FwaShape& s) {
  return std::max<int64_t>(1, s.length * (6 * s.depth + 4 * s.value_depth + 32));
}


bool FwaIsaSupported(FwaIsa isa) {
  if (isa == FwaIsa::kBaseline) return true;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

const char* FwaIsaName(FwaIsa isa) { return isa == FwaIsa::kAvx2 ? "avx2" : "baseline"; }

namespace {

FwaIsa ChooseIsa() {
  const FwaIsa best = FwaIsaSupported(FwaIsa::kAvx2) ? FwaIsa::kAvx2 : FwaIsa::kBaseline;
  const char* asked = std::getenv("TFREC_KUAI_FWA_ISA");
  if (asked == nullptr || *asked == '\0' || std::strcmp(asked, "auto") == 0) return best;
  if (std::strcmp(asked, "baseline") == 0) return FwaIsa::kBaseline;
  if (std::strcmp(asked, "avx2") == 0 && best == FwaIsa::kAvx2) return FwaIsa::kAvx2;
  std::fprintf(stderr, "tfrec_kuai: TFREC_KUAI_FWA_ISA=%s is not one of auto, baseline, avx2 (on this CPU): "
               "using %s\n", asked, FwaIsaName(best));
  return best;
}

}  // namespace

FwaIsa FwaActiveIsa() {
  static const FwaIsa isa = ChooseIsa();
  return isa;
}

void FwaForwardWith(FwaIsa isa, const FwaInputs& in, float* out, int64_t begin, int64_t end) {
  if (isa == FwaIsa::kAvx2) {
    isa_avx2::Forward(in, out, begin, end);
  } else {
    isa_baseline::Forward(in, out, begin, end);
  }
}

void FwaBackwardWith(FwaIsa isa, const FwaInputs& in, const float* grad_out, const FwaGradients& grads,
                     int64_t begin, int64_t end) {
  if (isa == FwaIsa::kAvx2) {
    isa_avx2::Backward(in, grad_out, grads, begin, end);
  } else {
    isa_baseline::Backward(in, grad_out, grads, begin, end);
  }
}

void FwaForward(const FwaInputs& in, float* out, int64_t begin, int64_t end) {
  FwaForwardWith(FwaActiveIsa(), in, out, begin, end);
}

void FwaBackward(const FwaInputs& in, const float* grad_out, const FwaGradients& grads, int64_t begin,
                 int64_t end) {
  FwaBackwardWith(FwaActiveIsa(), in, grad_out, grads, begin, end);
}

}  // namespace tfrec_kuai
