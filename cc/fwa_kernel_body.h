// The kernels of the feedback-weighted attention, once per instruction set: included by
// cc/fwa_kernel.cc (the x86-64-v2 baseline, namespace isa_baseline) and by cc/fwa_kernel_avx2.cc
// (compiled for AVX2 + FMA, namespace isa_avx2), which FwaForward / FwaBackward pick between at
// run time (fwa_kernel.h). Not a header for anyone else: it defines functions, and the includer
// defines FWA_ISA_NAMESPACE and has included the standard headers below first, so that their
// inline functions and templates stay baseline code in both copies (an AVX2 instance of, say,
// std::fill merged into the baseline library would fault on a CPU without AVX2).
//
// How the kernels work (see fwa_kernel.h for the maths and layouts):
//
// The work of a range of (b, h) units is done one history row b at a time, for all of that
// row's heads in the range together, so that each pass walks keys[b, l, :, :] and
// values[b, l, :, :] as one sequential stream (H*D floats per position) rather than H strided
// walks; only the valid positions l < lengths[b] are read:
//   forward:  logits (reads keys) -> max, exp, sum -> weighted sum of values (reads values)
//   backward: logits again (reads keys) -> u = <dout, v_l> and dv_l in one pass over values
//             -> ds_l -> dk_l and dq in one pass over keys.
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

#ifndef FWA_ISA_NAMESPACE
#error "define FWA_ISA_NAMESPACE before including fwa_kernel_body.h"
#endif

namespace tfrec_kuai {
namespace FWA_ISA_NAMESPACE {
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

// Software prefetch of the history position kPrefetchAhead ahead of position l (of n valid).
// One row's valid history is a short walk (n * H * D floats, tens of KB), much of which the
// hardware prefetcher would spend warming up; asking early keeps the memory-bound loops from
// stalling (8-20% measured). Positions past the valid ones are not prefetched: they are never
// read, and the address would point past the array.
constexpr int64_t kPrefetchAhead = 8;
inline void PrefetchAhead(const float* row, int64_t row_stride, int64_t floats, int64_t l, int64_t n) {
  if (l + kPrefetchAhead >= n) return;
  const char* p = reinterpret_cast<const char*>(row + kPrefetchAhead * row_stride);
  for (int64_t off = 0; off < floats * static_cast<int64_t>(sizeof(float)); off += 64) __builtin_prefetch(p + off);
}

// Valid length of row b, clamped so that a caller that skipped FwaCheckLengths still cannot
// make the kernel read outside the arrays.
inline int64_t ValidLength(const FwaInputs& in, int64_t b) {
  const int64_t n = in.lengths[b];
  return std::min<int64_t>(std::max<int64_t>(n, 0), in.shape.length);
}

// Softmax probabilities of heads [h0, h0 + nh) of row b over its n > 0 valid positions, into
// p[hh * L + l] (hh = h - h0). One sequential pass over the keys of the row.
template <int KD>
void RowProbabilities(const FwaInputs& in, int64_t b, int64_t h0, int64_t nh, int64_t n, float* __restrict p) {
  const FwaShape& s = in.shape;
  const int64_t D = KD > 0 ? KD : s.depth;
  const int64_t L = s.length;
  const int64_t pos0 = b * L * s.heads + h0;  // index of (b, l=0, h0) in [B,L,H]
  const float* q = in.query + (b * s.heads + h0) * D;
  for (int64_t l = 0; l < n; ++l) {
    const int64_t pos = pos0 + l * s.heads;
    const float* krow = in.keys + pos * D;
    PrefetchAhead(krow, s.heads * D, nh * D, l, n);
    for (int64_t hh = 0; hh < nh; ++hh) {
      p[hh * L + l] = in.scale * Dot(q + hh * D, krow + hh * D, D) + in.bias[pos + hh];
    }
  }
  for (int64_t hh = 0; hh < nh; ++hh) {
    float* ph = p + hh * L;
    float max_logit = -std::numeric_limits<float>::infinity();
    for (int64_t l = 0; l < n; ++l) max_logit = std::max(max_logit, ph[l]);
    // A +inf or NaN logit (from inf/NaN inputs) makes the row NaN; that is the honest answer for
    // such inputs and matches the composite, so it is not masked here.
    float sum = 0.0f;
    for (int64_t l = 0; l < n; ++l) {
      ph[l] = std::exp(ph[l] - max_logit);
      sum += ph[l];
    }
    const float inv = 1.0f / sum;  // sum >= 1: the max position contributes exp(0)
#pragma omp simd
    for (int64_t l = 0; l < n; ++l) ph[l] *= inv;
  }
}

// Calls fn(b, h0, nh) for each history row touched by the units [begin, end), with the heads
// [h0, h0 + nh) of that row that lie in the range (a range may start or end inside a row).
template <typename Fn>
inline void ForEachRow(const FwaShape& s, int64_t begin, int64_t end, Fn fn) {
  for (int64_t unit = begin; unit < end;) {
    const int64_t b = unit / s.heads;
    const int64_t h0 = unit % s.heads;
    const int64_t nh = std::min(s.heads - h0, end - unit);
    fn(b, h0, nh);
    unit += nh;
  }
}

// The per-range kernels are templates on the depths so that the common sizes (D = Dv in 16,
// 32, 64) get fully unrolled inner loops; KD/KDV == 0 is the generic version for any depth.
// Accumulators live in scratch buffers, never in the output tensor: TensorFlow's tensors are
// page-aligned, and read-modify-write of the output while streaming the values made an earlier
// version ~3x slower through 4K-aliasing stalls.
template <int KD, int KDV>
void ForwardRange(const FwaInputs& in, float* out, int64_t begin, int64_t end) {
  const FwaShape& s = in.shape;
  const int64_t Dv = KDV > 0 ? KDV : s.value_depth;
  const int64_t L = s.length;
  std::vector<float> p(static_cast<size_t>(std::max<int64_t>(L * s.heads, 1)));
  std::vector<float> acc(static_cast<size_t>(std::max<int64_t>(Dv * s.heads, 1)));
  ForEachRow(s, begin, end, [&](int64_t b, int64_t h0, int64_t nh) {
    const int64_t n = ValidLength(in, b);
    std::fill(acc.begin(), acc.begin() + nh * Dv, 0.0f);
    if (n > 0) {
      RowProbabilities<KD>(in, b, h0, nh, n, p.data());
      const int64_t pos0 = b * L * s.heads + h0;
      for (int64_t l = 0; l < n; ++l) {
        const int64_t pos = pos0 + l * s.heads;
        const float* vrow = in.values + pos * Dv;
        PrefetchAhead(vrow, s.heads * Dv, nh * Dv, l, n);
        for (int64_t hh = 0; hh < nh; ++hh) {
          const float w = p[hh * L + l] * in.gate[pos + hh];
          const float* __restrict vl = vrow + hh * Dv;
          float* __restrict a = acc.data() + hh * Dv;
#pragma omp simd
          for (int64_t j = 0; j < Dv; ++j) a[j] += w * vl[j];
        }
      }
    }
    std::memcpy(out + (b * s.heads + h0) * Dv, acc.data(), sizeof(float) * nh * Dv);
  });
}

template <int KD, int KDV>
void BackwardRange(const FwaInputs& in, const float* grad_out, const FwaGradients& grads, int64_t begin,
                   int64_t end) {
  const FwaShape& s = in.shape;
  const int64_t D = KD > 0 ? KD : s.depth;
  const int64_t Dv = KDV > 0 ? KDV : s.value_depth;
  const int64_t L = s.length;
  const size_t hl = static_cast<size_t>(std::max<int64_t>(L * s.heads, 1));
  std::vector<float> p(hl), u(hl), c(static_cast<size_t>(s.heads));
  std::vector<float> dq(static_cast<size_t>(std::max<int64_t>(D * s.heads, 1)));
  const bool stream_k = Streamable(grads.keys, D);
  const bool stream_v = Streamable(grads.values, Dv);
  ForEachRow(s, begin, end, [&](int64_t b, int64_t h0, int64_t nh) {
    const int64_t n = ValidLength(in, b);
    const int64_t pos0 = b * L * s.heads + h0;  // index of (b, l=0, h0) in [B,L,H]
    const float* q = in.query + (b * s.heads + h0) * D;
    const float* go = grad_out + (b * s.heads + h0) * Dv;
    // Padding positions get exact zeros (they never influenced the output); the heads of one
    // position are contiguous, so each is one block per tensor.
    for (int64_t l = n; l < L; ++l) {
      const int64_t pos = pos0 + l * s.heads;
      ZeroRow(grads.keys + pos * D, nh * D, stream_k);
      ZeroRow(grads.values + pos * Dv, nh * Dv, stream_v);
      for (int64_t hh = 0; hh < nh; ++hh) grads.bias[pos + hh] = grads.gate[pos + hh] = 0.0f;
    }
    std::fill(dq.begin(), dq.begin() + nh * D, 0.0f);
    if (n > 0) {
      RowProbabilities<KD>(in, b, h0, nh, n, p.data());
      // u_l = <dout, v_l>; dv_l = p_l g_l dout; dgate_l = p_l u_l; c = sum_l p_l g_l u_l = <dout, out>
      // (the array u keeps g_l u_l).
      std::fill(c.begin(), c.begin() + nh, 0.0f);
      for (int64_t l = 0; l < n; ++l) {
        const int64_t pos = pos0 + l * s.heads;
        const float* vrow = in.values + pos * Dv;
        PrefetchAhead(vrow, s.heads * Dv, nh * Dv, l, n);
        for (int64_t hh = 0; hh < nh; ++hh) {
          const float* __restrict vl = vrow + hh * Dv;
          const float* __restrict gh = go + hh * Dv;
          float ul = 0.0f;
#pragma omp simd reduction(+ : ul)
          for (int64_t j = 0; j < Dv; ++j) ul += gh[j] * vl[j];
          const float pl = p[hh * L + l];
          const float gl = in.gate[pos + hh];
          ScaleRow(pl * gl, gh, grads.values + (pos + hh) * Dv, Dv, stream_v);
          grads.gate[pos + hh] = pl * ul;
          // gu = g_l u_l is rounded once and kept, and both c and ds below use that same value:
          // then a history of one position (p = 1) gives ds = gu - gu = 0 exactly, with or without
          // FMA (an FMA contraction of g_l u_l - c would leave the product's rounding residue).
          const float gu = gl * ul;
          u[hh * L + l] = gu;
          c[hh] += pl * gu;
        }
      }
      // Softmax backward: ds_l = p_l (g_l u_l - c); dbias = ds; dk_l = scale ds_l q; dq = scale sum ds_l k_l.
      for (int64_t l = 0; l < n; ++l) {
        const int64_t pos = pos0 + l * s.heads;
        const float* krow = in.keys + pos * D;
        PrefetchAhead(krow, s.heads * D, nh * D, l, n);
        for (int64_t hh = 0; hh < nh; ++hh) {
          const float ds = p[hh * L + l] * (u[hh * L + l] - c[hh]);
          grads.bias[pos + hh] = ds;
          const float sds = in.scale * ds;
          ScaleRow(sds, q + hh * D, grads.keys + (pos + hh) * D, D, stream_k);
          const float* __restrict kl = krow + hh * D;
          float* __restrict dqh = dq.data() + hh * D;
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) dqh[j] += sds * kl[j];
        }
      }
    }
    std::memcpy(grads.query + (b * s.heads + h0) * D, dq.data(), sizeof(float) * nh * D);
  });
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

void Forward(const FwaInputs& in, float* out, int64_t begin, int64_t end) {
  ForwardFn f;
  BackwardFn g;
  Specialisation(in.shape, &f, &g);
  f(in, out, begin, end);
}

void Backward(const FwaInputs& in, const float* grad_out, const FwaGradients& grads, int64_t begin,
              int64_t end) {
  ForwardFn f;
  BackwardFn g;
  Specialisation(in.shape, &f, &g);
  g(in, grad_out, grads, begin, end);
}

}  // namespace FWA_ISA_NAMESPACE
}  // namespace tfrec_kuai
