// llm_kernels::linear_rows(x, weight, bias) -> y: F.linear for a few rows of float32 on CPU.
//
// Decode multiplies one row per running stream by every weight matrix, so its speed is the
// rate at which the weights stream from memory. This kernel reads each weight row once for
// all input rows (up to 16) and shares the output rows between torch's intra-op threads in
// chunks (see linear_rows below). One input row (a stream's decode) reads one weight row at a
// time, front to back: a single sequential stream per thread, left to the hardware
// prefetchers. More input rows read several weight rows at a time with software prefetch.
// Weights are row-major ([out, in], unit stride along in); x is [..., in] with at most 16
// rows; y is [..., out].
//
// llm_kernels.native compiles it at first use with -march=native: AVX2 intrinsics where the
// CPU has AVX2 and FMA but not AVX-512, GCC's vector extensions elsewhere (one AVX-512
// register per vector there; portable C++ without either).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "work_share.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define LLM_LINEAR_AVX2 1
#include <immintrin.h>
#else
#include "vec16.h"
#endif

namespace {

constexpr int64_t kLanes = 16;          // floats per step of a dot product (one accumulator)
constexpr int64_t kMaxRows = 16;        // input rows per call
constexpr int64_t kPrefetchAhead = 2048;  // floats (8 KiB) ahead of the weights being read, into L2
constexpr int64_t kChunk = 32768;         // floats (128 KiB) of weights: the unit of work sharing
constexpr int64_t kSerial = 65536;        // floats (256 KiB): a smaller matrix stays on one thread

// The arithmetic of one dot product, whatever the tile computing it: lane j of a 16-float
// accumulator sums w[i] * x[i] over i = j mod 16, then the lanes are added. A product's bits
// thus do not depend on the number of input rows or the weight rows around it.
#if defined(LLM_LINEAR_AVX2)
// AVX2 (sixteen 256-bit registers): an accumulator is two __m256 (lanes 0-7, 8-15) updated
// with fused multiply-adds. (GCC's 64-byte vector extension, below, keeps arrays of them on
// the stack here: 4-5x slower.)
constexpr bool kAvx2 = true;
struct Acc {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
};
struct Wv {
  __m256 lo, hi;
};
inline Wv load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void fma(Acc& a, const Wv& w, const Wv& x) {
  a.lo = _mm256_fmadd_ps(w.lo, x.lo, a.lo);
  a.hi = _mm256_fmadd_ps(w.hi, x.hi, a.hi);
}
// An input vector stays in registers for the R products that use it (see keep below).
inline void keep(Wv& x) { asm volatile("" : "+x"(x.lo), "+x"(x.hi)); }
inline float hsum(const Acc& a) {
  const __m256 s = _mm256_add_ps(a.lo, a.hi);
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  return _mm_cvtss_f32(v);
}
#else
// One AVX-512 register per vector (elsewhere GCC splits it as it can); vec16.h's tree of adds
// ends a sum (at eight input rows, a sum per 48 multiply-adds of a 768-wide row, fifteen
// dependent scalar adds took a sizeable share of the tile: 1.07x the speed with the tree).
constexpr bool kAvx2 = false;
typedef vec16 Acc;
typedef vec16 Wv;
inline void fma(vec16& a, const vec16& w, const vec16& x) { a += w * x; }
#if defined(__AVX512F__)
inline void keep(vec16& x) { asm volatile("" : "+v"(x)); }
#else
inline void keep(vec16&) {}  // no register holds all sixteen lanes: GCC splits the vector
#endif
#endif

// y[m * ld_y + r] = sum_i w[r * in + i] * x[m * in + i] for r < R, m < M; with software
// prefetch of the weights ahead (below), or none (Prefetch false).
template <int R, int M, bool Prefetch = true>
inline void block(const float* w, int64_t in, const float* x, float* y, int64_t ld_y) {
  Acc acc[R][M] = {};
  // at least the next tile's rows: kPrefetchAhead past a row of 2048 (a down projection) is
  // the next row of the same tile, in flight already (R x in ahead: the llama-125m shape's
  // down products of 8 rows 1.10-1.16x the speed in a C++ harness on a Zen 4 VM)
  const int64_t ahead = std::max<int64_t>(kPrefetchAhead, R * in);
  const int64_t body = in - in % kLanes;
  for (int64_t i = 0; i < body; i += kLanes) {
    Wv wv[R];
    for (int r = 0; r < R; ++r) {
      if constexpr (Prefetch) __builtin_prefetch(w + r * in + i + ahead, 0, 2);
      wv[r] = load(w + r * in + i);
    }
    for (int m = 0; m < M; ++m) {
      Wv xv = load(x + m * in + i);
      // one load of x for the R products: left alone, GCC folds the load into each
      // multiply-add as a memory operand, and R + 1 loads per R multiply-adds bound the tile
      // (a C++ harness on a Zen 4 VM, one core, 8 input rows, weights in cache: 3 x 8 tiles
      // 83.5-98.8 GFLOPS with x kept in a register, 50.2-54.7 without, three runs)
      if constexpr (R > 1) keep(xv);
      for (int r = 0; r < R; ++r) fma(acc[r][m], wv[r], xv);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int m = 0; m < M; ++m) {
      float s = hsum(acc[r][m]);
      for (int64_t i = body; i < in; ++i) s += w[r * in + i] * x[m * in + i];
      y[m * ld_y + r] = s;
    }
  }
}

// Tiles of R weight rows by M input rows whose accumulators fit the registers: with 32
// (AVX-512), 3 x 8 (24 accumulators), R weight rows against all m input rows, eight at a time
// (the weights stay in L1 between); with 16 (AVX2), 8 halves at most: 4 x 1, 2 x 2, 2 x 3 and
// 1 x 4 (a weight row read from L1 again for each four input rows).
template <int R>
inline void block_rows(const float* w, int64_t in, const float* x, int64_t m, float* y,
                       int64_t ld_y) {
  for (int64_t m0 = 0; m0 < m; m0 += 8) {
    const float* xm = x + m0 * in;
    float* ym = y + m0 * ld_y;
    switch (std::min<int64_t>(8, m - m0)) {
      case 1: block<R, 1>(w, in, xm, ym, ld_y); break;
      case 2: block<R, 2>(w, in, xm, ym, ld_y); break;
      case 3: block<R, 3>(w, in, xm, ym, ld_y); break;
      case 4: block<R, 4>(w, in, xm, ym, ld_y); break;
      case 5: block<R, 5>(w, in, xm, ym, ld_y); break;
      case 6: block<R, 6>(w, in, xm, ym, ld_y); break;
      case 7: block<R, 7>(w, in, xm, ym, ld_y); break;
      default: block<R, 8>(w, in, xm, ym, ld_y); break;
    }
  }
}

// Four weight rows (R = 4) or one against all m input rows, with AVX2's tiles.
template <int R>
inline void block_rows_avx2(const float* w, int64_t in, const float* x, int64_t m, float* y,
                            int64_t ld_y) {
  int64_t m0 = 0;
  for (; m0 + 4 <= m; m0 += 4)
    for (int r = 0; r < R; ++r) block<1, 4>(w + r * in, in, x + m0 * in, y + m0 * ld_y + r, ld_y);
  const float* xm = x + m0 * in;
  float* ym = y + m0 * ld_y;
  const int64_t left = m - m0;
  if (R == 1) {
    for (int64_t k = 0; k < left; ++k) block<1, 1>(w, in, xm + k * in, ym + k * ld_y, ld_y);
  } else if (left == 1) {
    block<4, 1>(w, in, xm, ym, ld_y);
  } else if (left == 2) {
    block<2, 2>(w, in, xm, ym, ld_y);
    block<2, 2>(w + 2 * in, in, xm, ym + 2, ld_y);
  } else if (left == 3) {
    block<2, 3>(w, in, xm, ym, ld_y);
    block<2, 3>(w + 2 * in, in, xm, ym + 2, ld_y);
  }
}

// Output columns [begin, end): one weight row at a time for one input row, blocks of 3 for
// more (up to 24 accumulators), then the 1 or 2 rows left; AVX2: blocks of 4 in the tiles
// above.
void columns(const float* w, int64_t in, const float* x, int64_t m, float* y, int64_t out,
             int64_t begin, int64_t end) {
  int64_t o = begin;
  if constexpr (kAvx2) {
    for (; o + 4 <= end; o += 4) block_rows_avx2<4>(w + o * in, in, x, m, y + o, out);
    for (; o < end; ++o) block_rows_avx2<1>(w + o * in, in, x, m, y + o, out);
  } else {
    if (m == 1) {
      // one weight row at a time, no software prefetch: a single sequential stream per
      // thread, which the hardware prefetchers serve best. On a Zen 4 VM (2026-12-03) the
      // llama-125m shape's 49 products of one row took 0.73x the time of four rows side by
      // side with prefetch (median of 20 interleaved rounds, all 20 faster; the whole native
      // step 0.77x); one row with prefetch 0.89x. With 8 input rows a single weight row is
      // slower (0.59x the speed: loads of x, not the memory, bound it), so blocks stay.
      for (; o < end; ++o) block<1, 1, false>(w + o * in, in, x, y + o, out);
      return;
    }
    for (; o + 3 <= end; o += 3) block_rows<3>(w + o * in, in, x, m, y + o, out);
    if (end - o == 2) block_rows<2>(w + o * in, in, x, m, y + o, out);
    if (end - o == 1) block_rows<1>(w + o * in, in, x, m, y + o, out);
  }
}

// Weight rows a share of the work starts at a multiple of, for m input rows: whole tiles
// (several inputs: 12, four 3-row tiles or three of AVX2's 4-row ones, since a tile cut short
// costs more per row: one row of eight inputs 1.7x a row of a 3-row tile at 768 inputs, 2.3x
// at 2048, weights in L2, a Zen 4 VM; one input: 4).
int64_t rows_together(int64_t m) { return m > 1 ? 12 : 4; }

at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "linear_rows: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "linear_rows: float32 tensors only");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) > 0 && weight.size(1) > 0,
              "linear_rows: weight must be a non-empty [out, in] matrix");
  TORCH_CHECK(weight.stride(1) == 1 && weight.stride(0) == weight.size(1),
              "linear_rows: weight must be row-major (contiguous [out, in])");
  const int64_t out = weight.size(0);
  const int64_t in = weight.size(1);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in, "linear_rows: x must be [..., ", in,
              "], got last dimension ", x.dim() ? x.size(-1) : 0);
  const int64_t m = x.numel() / in;
  TORCH_CHECK(m >= 1 && m <= kMaxRows, "linear_rows: 1 to ", kMaxRows,
              " input rows, got ", m);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat &&
                    bias->dim() == 1 && bias->size(0) == out,
                "linear_rows: bias must be a float32 [", out, "] CPU tensor");
  }
  const at::Tensor xc = x.contiguous();
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  at::Tensor y = at::empty(sizes, x.options());
  const float* wp = weight.data_ptr<float>();
  const float* xp = xc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int threads = at::get_num_threads();
  if (threads == 1 || out * in < kSerial) {
    columns(wp, in, xp, m, yp, out, 0, out);
  } else {
    // Chunks of whole tiles (rows_together), about kChunk weights each. Each thread owns a
    // contiguous share of them and works it front to back; a thread done with its own takes
    // chunks from the back of a share still in progress, so a thread that the OS holds up (a
    // busy host) does not keep the others waiting at the end.
    const int64_t whole = rows_together(m);
    const int64_t chunk = std::max<int64_t>(whole, kChunk / in / whole * whole);
    const int64_t n = (out + chunk - 1) / chunk;
    const int64_t T = std::min<int64_t>(threads, n);
    const auto run = [&](int64_t c) {
      columns(wp, in, xp, m, yp, out, c * chunk, std::min(out, (c + 1) * chunk));
    };
    WorkShares shares(n, T);
    at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) { shares.run(begin, end, run); });
  }
  if (bias.has_value() && bias->defined()) y.add_(*bias);
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llm_kernels, lib) {
  lib.def("linear_rows(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(llm_kernels, CPU, lib) { lib.impl("linear_rows", &linear_rows); }

// decode_layers.cpp's view: output columns [begin, end) of x [m, in] times the row-major weight
// w [out, in], y[r * ld_y + n] for input row r (any m; called inside its parallel region).
void llm_kernels_linear_columns(const float* w, int64_t in, const float* x, int64_t m, float* y,
                                int64_t ld_y, int64_t begin, int64_t end) {
  columns(w, in, x, m, y, ld_y, begin, end);
}
int64_t llm_kernels_linear_rows_together(int64_t m) { return rows_together(m); }
