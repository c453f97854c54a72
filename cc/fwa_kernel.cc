// Kernel core of the feedback-weighted attention (see fwa_kernel.h for the maths and layouts).
//
// Per (b, h) unit the work is a few short passes over the valid positions only:
//   forward:  logits (reads keys) -> max, exp, sum -> weighted sum of values (reads values)
//   backward: logits again (keys, then cached in L1/L2 for dq/dk) -> u_l = <dout, v_l> and
//             dv_l in the same pass over values -> ds_l -> dk_l and dq in one pass over keys.
// The loops over D and Dv are contiguous in memory and carry `omp simd` (enabled by
// -fopenmp-simd, no OpenMP runtime) so that the compiler vectorises the dot-product reductions,
// which it may not reorder on its own under strict IEEE semantics.
#include "fwa_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <immintrin.h>  // SSE streaming stores (x86-64 baseline)

namespace tfrec_kuai {
namespace {

inline float Dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// y[0..n) = alpha * x[0..n). The gradient rows of keys and values are written once and never
// read back by the kernel, so when `stream` is set (n % 4 == 0 and y 16-byte aligned) they are
// written with non-temporal stores: that skips the read-for-ownership of every destination
// cache line, a third of the backward's memory traffic. Callers end with _mm_sfence().
inline void ScaleRow(float alpha, const float* __restrict x, float* __restrict y, int64_t n, bool stream) {
  if (stream) {
    const __m128 a = _mm_set1_ps(alpha);
    for (int64_t j = 0; j < n; j += 4) _mm_stream_ps(y + j, _mm_mul_ps(a, _mm_loadu_ps(x + j)));
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = alpha * x[j];
}

inline void ZeroRow(float* y, int64_t n, bool stream) {
  if (stream) {
    const __m128 z = _mm_setzero_ps();
    for (int64_t j = 0; j < n; j += 4) _mm_stream_ps(y + j, z);
    return;
  }
  std::memset(y, 0, sizeof(float) * n);
}

inline bool Streamable(const float* base, int64_t depth) {
  return depth % 4 == 0 && reinterpret_cast<std::uintptr_t>(base) % 16 == 0;
}

// Software prefetch of the row `ahead` positions later. The rows of one (b, h) are H*D floats
// apart, a stride the hardware prefetcher follows only after a warm-up on every unit's short
// walk; asking early keeps the loads of the memory-bound loops from stalling. Prefetching past
// the end is harmless (prefetch never faults), so there is no bounds check.
constexpr int64_t kPrefetchAhead = 8;
inline void PrefetchRow(const float* row, int64_t depth) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < depth * static_cast<int64_t>(sizeof(float)); off += 64) __builtin_prefetch(p + off);
}

// Valid length of row b, clamped so that a caller that skipped FwaCheckLengths still cannot
// make the kernel read outside the arrays.
inline int64_t ValidLength(const FwaInputs& in, int64_t b) {
  const int64_t n = in.lengths[b];
  return std::min<int64_t>(std::max<int64_t>(n, 0), in.shape.length);
}

// Softmax probabilities of unit (b, h) over its n > 0 valid positions, into p[0..n).
template <int KD>
void Probabilities(const FwaInputs& in, int64_t b, int64_t h, int64_t n, float* __restrict p) {
  const FwaShape& s = in.shape;
  const int64_t D = KD > 0 ? KD : s.depth;
  const int64_t row = s.heads;                      // stride of bias/gate between positions
  const int64_t krow = s.heads * D;                 // stride of keys between positions
  const float* q = in.query + (b * s.heads + h) * D;
  const float* k = in.keys + (b * s.length * s.heads + h) * D;
  const float* bias = in.bias + b * s.length * s.heads + h;
  float max_logit = -std::numeric_limits<float>::infinity();
  for (int64_t l = 0; l < n; ++l) {
    PrefetchRow(k + (l + kPrefetchAhead) * krow, D);
    const float logit = in.scale * Dot(q, k + l * krow, D) + bias[l * row];
    p[l] = logit;
    max_logit = std::max(max_logit, logit);
  }
  // A +inf or NaN logit (from inf/NaN inputs) would make every probability NaN; that is the
  // honest answer for such inputs and matches the composite, so it is not masked here.
  float sum = 0.0f;
  for (int64_t l = 0; l < n; ++l) {
    p[l] = std::exp(p[l] - max_logit);
    sum += p[l];
  }
  const float inv = 1.0f / sum;  // sum >= 1: the max position contributes exp(0)
#pragma omp simd
  for (int64_t l = 0; l < n; ++l) p[l] *= inv;
}

}  // namespace

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

namespace {

// The per-range kernels are templates on the depths so that the common sizes (16, 32, 64) get
// fully unrolled loops whose accumulators live in registers; KD/KDV == 0 is the generic
// version for any depth. Accumulating into a local array rather than straight into the output
// tensor also keeps the inner loop free of loads and stores that the CPU could mistake for
// aliasing the streamed keys/values (4K aliasing made the in-place version ~3x slower when the
// tensors were page-aligned, as TensorFlow's are).
template <int KD, int KDV>
void ForwardRange(const FwaInputs& in, float* out, int64_t begin, int64_t end) {
  const FwaShape& s = in.shape;
  const int64_t Dv = KDV > 0 ? KDV : s.value_depth;
  std::vector<float> p(static_cast<size_t>(std::max<int64_t>(s.length, 1)));
  std::vector<float> acc_dynamic(KDV > 0 ? 0 : static_cast<size_t>(Dv));
  alignas(64) float acc_static[KDV > 0 ? KDV : 1];
  float* __restrict acc = KDV > 0 ? acc_static : acc_dynamic.data();
  const int64_t row = s.heads;
  const int64_t vrow = s.heads * Dv;
  for (int64_t unit = begin; unit < end; ++unit) {
    const int64_t b = unit / s.heads;
    const int64_t h = unit % s.heads;
    const int64_t n = ValidLength(in, b);
    for (int64_t j = 0; j < Dv; ++j) acc[j] = 0.0f;
    if (n > 0) {
      Probabilities<KD>(in, b, h, n, p.data());
      const float* v = in.values + (b * s.length * s.heads + h) * Dv;
      const float* gate = in.gate + b * s.length * s.heads + h;
      for (int64_t l = 0; l < n; ++l) {
        PrefetchRow(v + (l + kPrefetchAhead) * vrow, Dv);
        const float w = p[l] * gate[l * row];
        const float* __restrict vl = v + l * vrow;
#pragma omp simd
        for (int64_t j = 0; j < Dv; ++j) acc[j] += w * vl[j];
      }
    }
    std::memcpy(out + unit * Dv, acc, sizeof(float) * Dv);
  }
}

template <int KD, int KDV>
void BackwardRange(const FwaInputs& in, const float* grad_out, const FwaGradients& grads, int64_t begin,
                   int64_t end) {
  const FwaShape& s = in.shape;
  const int64_t D = KD > 0 ? KD : s.depth;
  const int64_t Dv = KDV > 0 ? KDV : s.value_depth;
  const size_t len = static_cast<size_t>(std::max<int64_t>(s.length, 1));
  std::vector<float> p(len), u(len);
  std::vector<float> dq_dynamic(KD > 0 ? 0 : static_cast<size_t>(D));
  alignas(64) float dq_static[KD > 0 ? KD : 1];
  float* __restrict dq_acc = KD > 0 ? dq_static : dq_dynamic.data();
  const int64_t row = s.heads;
  const int64_t krow = s.heads * D;
  const int64_t vrow = s.heads * Dv;
  const bool stream_k = Streamable(grads.keys, D);
  const bool stream_v = Streamable(grads.values, Dv);
  for (int64_t unit = begin; unit < end; ++unit) {
    const int64_t b = unit / s.heads;
    const int64_t h = unit % s.heads;
    const int64_t n = ValidLength(in, b);
    const int64_t kv_base = b * s.length * s.heads + h;  // index of (b, l=0, h) in [B,L,H]
    const float* __restrict q = in.query + unit * D;
    const float* k = in.keys + kv_base * D;
    const float* v = in.values + kv_base * Dv;
    const float* gate = in.gate + kv_base;
    const float* __restrict go = grad_out + unit * Dv;
    float* dk = grads.keys + kv_base * D;
    float* dv = grads.values + kv_base * Dv;
    float* dbias = grads.bias + kv_base;
    float* dgate = grads.gate + kv_base;

    // Padding positions get exact zeros (they never influenced the output).
    for (int64_t l = n; l < s.length; ++l) {
      ZeroRow(dk + l * krow, D, stream_k);
      ZeroRow(dv + l * vrow, Dv, stream_v);
      dbias[l * row] = 0.0f;
      dgate[l * row] = 0.0f;
    }
    for (int64_t j = 0; j < D; ++j) dq_acc[j] = 0.0f;
    if (n > 0) {
      Probabilities<KD>(in, b, h, n, p.data());
      // u_l = <dout, v_l>; dv_l = p_l g_l dout; dgate_l = p_l u_l; c = sum_l p_l g_l u_l = <dout, out>.
      float c = 0.0f;
      for (int64_t l = 0; l < n; ++l) {
        PrefetchRow(v + (l + kPrefetchAhead) * vrow, Dv);
        const float* __restrict vl = v + l * vrow;
        float* __restrict dvl = dv + l * vrow;
        float ul = 0.0f;
#pragma omp simd reduction(+ : ul)
        for (int64_t j = 0; j < Dv; ++j) ul += go[j] * vl[j];
        const float pg = p[l] * gate[l * row];
        ScaleRow(pg, go, dvl, Dv, stream_v);
        dgate[l * row] = p[l] * ul;
        u[l] = ul;
        c += pg * ul;
      }
      // Softmax backward: ds_l = p_l (g_l u_l - c); dbias = ds; dk_l = scale ds_l q; dq = scale sum ds_l k_l.
      for (int64_t l = 0; l < n; ++l) {
        const float ds = p[l] * (gate[l * row] * u[l] - c);
        dbias[l * row] = ds;
        const float sds = in.scale * ds;
        const float* __restrict kl = k + l * krow;
        float* __restrict dkl = dk + l * krow;
        ScaleRow(sds, q, dkl, D, stream_k);
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) dq_acc[j] += sds * kl[j];
      }
    }
    std::memcpy(grads.query + unit * D, dq_acc, sizeof(float) * D);
  }
  _mm_sfence();  // make the streaming stores visible before the caller's threads join
}

using ForwardFn = void (*)(const FwaInputs&, float*, int64_t, int64_t);
using BackwardFn = void (*)(const FwaInputs&, const float*, const FwaGradients&, int64_t, int64_t);

template <int KD, int KDV>
bool Pick(const FwaShape& s, ForwardFn* f, BackwardFn* g) {
  if (s.depth != KD || s.value_depth != KDV) return false;
  *f = &ForwardRange<KD, KDV>;
  *g = &BackwardRange<KD, KDV>;
  return true;
}

void Specialisation(const FwaShape& s, ForwardFn* f, BackwardFn* g) {
  if (Pick<16, 16>(s, f, g) || Pick<32, 32>(s, f, g) || Pick<64, 64>(s, f, g)) return;
  *f = &ForwardRange<0, 0>;
  *g = &BackwardRange<0, 0>;
}

}  // namespace

void FwaForward(const FwaInputs& in, float* out, int64_t begin, int64_t end) {
  ForwardFn f;
  BackwardFn g;
  Specialisation(in.shape, &f, &g);
  f(in, out, begin, end);
}

void FwaBackward(const FwaInputs& in, const float* grad_out, const FwaGradients& grads, int64_t begin,
                 int64_t end) {
  ForwardFn f;
  BackwardFn g;
  Specialisation(in.shape, &f, &g);
  g(in, grad_out, grads, begin, end);
}

}  // namespace tfrec_kuai
