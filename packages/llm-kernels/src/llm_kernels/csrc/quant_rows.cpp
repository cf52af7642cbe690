// llm_kernels::quant_rows(x, qweight, scales, mins, format, group_size, bias, activations)
// -> y: y = x @ W.T for rows of float32 on CPU, W kept quantized as it is stored (16 rows
// at a time: a prompt of T rows reads the weights ceil(T / 16) times).
//
// Formats (layouts in llm_kernels/reference.py, W logically [N, K], K a multiple of 32):
//   0 Q8_0, 1 Q4_0, 2 Q4_1: GGUF blocks, uint8 [N, K/32*B] (scales and mins unused);
//   3 int8: int8 [N, K] with float32 scales [N];
//   4 q4: uint8 [N, K/2] in groups of G (32, 64, 128), float16 scales [N, K/G] and optional
//     float16 mins [N, K/G];
//   5 Q4_0, 6 Q4_1 with eight rows interleaved (N a multiple of 8; see tile_x8): the same
//     bytes as 1 and 2 in another order, float or int8 activations only.
// Every format is read as blocks of 32 weights with a scale d and (4-bit) an offset m:
// w = q * d + m, q in 0..15 (4-bit; m = -8 d when symmetric) or -127..127 (8-bit; m = 0).
//
// Four ways to multiply, chosen per call (`activations`):
//   1, int8 activations: each row of x quantized per block of 32 (as llama.cpp's Q8_0/Q8_1:
//     dx = amax / 127, qx = round(x / dx), sx = dx * sum(qx)); per block an int8 dot product
//     (AVX-512 VNNI / AVX-VNNI vpdpbusd, else AVX2 maddubs), y += d dx dot + m sx. Q8_0 and
//     4-bit blocks in GGUF order go two blocks of a row at a time (pairs_q8, pairs_4bit: one
//     conversion and scaling for both, the 4-bit zero point -8 in integers).
//   2, the same with one dx per row (dynamic per-token W8A8: dx = the row's amax / 127).
//   3, int16 activations: the same per block of 32 with dx = amax / 32767 (x / dx rounded
//     half away from zero: steps 258 times finer than int8's, errors of about 3e-6 of the
//     terms' scale against 7e-4), weights widened to int16 lanes, int16 pairs multiplied into int32 (AVX-512 VNNI /
//     AVX-VNNI vpdpwssd, else AVX2 madd), y += d dx dot + m sx with the symmetric zero point
//     in integers. 4-bit blocks in GGUF order go two blocks of four rows at a time
//     (pairs_4bit16: the activations stored in the lanes' order, four rows' sums reduced into
//     one vector, one conversion and scaling for eight blocks); Q8_0 two blocks at a time
//     (pairs_q8_16). Four weight rows per activation load whatever the number of input rows.
//   0, float activations: weights widened to float in registers, y += d sum(q x) + m sum(x);
//     the exact dequantized product apart from float32 rounding.
// Each weight row is read once for all input rows; output rows are shared between torch's
// threads in chunks of about 128 KiB of weights as in linear_rows.cpp. Every output is
// computed by the same sequence of operations whatever the chunking, so results do not
// depend on the thread count. Without AVX2 (another CPU or architecture) the same arithmetic
// runs as plain C++.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "work_share.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kQK = 32;              // weights per block
constexpr int64_t kMaxRows = 16;         // input rows per call
constexpr int64_t kChunkBytes = 131072;  // weights (bytes) per unit of work sharing
constexpr int64_t kSerialBytes = 262144; // a smaller matrix stays on one thread

enum Format : int64_t { kQ8_0 = 0, kQ4_0 = 1, kQ4_1 = 2, kInt8 = 3, kQ4 = 4, kQ4_0x8 = 5, kQ4_1x8 = 6 };

inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return c10::detail::fp16_ieee_to_fp32_value(h);
#endif
}

inline uint16_t read_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Where the weights of one format are.
struct Weights {
  const uint8_t* q;
  int64_t row_bytes;           // bytes of q per weight row
  const float* scales_f32;     // int8: [N]
  const uint16_t* scales_f16;  // q4: [N, groups]
  const uint16_t* mins_f16;    // q4 with zero points: [N, groups], else null
  int64_t groups;              // q4: K / G
  int64_t group;               // q4: G
};

// One block of 32 weights of row n: where its quantized values are, its scale and offset.
// For 4-bit formats `nib` says which nibbles hold the block's values: 0: GGUF order (16 bytes,
// low nibbles are elements 0..15, high 16..31), 1: the low nibbles of 32 bytes, 2: the high.
struct BlockRef {
  const uint8_t* p;
  int nib;
  float d, m;
};

template <int F, bool Min>
inline BlockRef block_ref(const Weights& w, int64_t n, int64_t b) {
  const uint8_t* row = w.q + n * w.row_bytes;
  if constexpr (F == kQ8_0) {
    const uint8_t* p = row + b * 34;
    return {p + 2, 0, half_to_float(read_u16(p)), 0.f};
  } else if constexpr (F == kQ4_0) {
    const uint8_t* p = row + b * 18;
    const float d = half_to_float(read_u16(p));
    return {p + 2, 0, d, -8.f * d};
  } else if constexpr (F == kQ4_1) {
    const uint8_t* p = row + b * 20;
    return {p + 4, 0, half_to_float(read_u16(p)), half_to_float(read_u16(p + 2))};
  } else if constexpr (F == kInt8) {
    return {row + b * kQK, 0, w.scales_f32[n], 0.f};
  } else {
    const int64_t per_group = w.group / kQK;  // blocks per group
    const int64_t g = b / per_group, c = b % per_group;
    const float d = half_to_float(w.scales_f16[n * w.groups + g]);
    const float m = Min ? half_to_float(w.mins_f16[n * w.groups + g]) : -8.f * d;
    const uint8_t* base = row + g * (w.group / 2);
    if (w.group == kQK) return {base, 0, d, m};
    const int64_t half = per_group / 2;  // blocks in the low nibbles of the group's bytes
    return c < half ? BlockRef{base + c * kQK, 1, d, m} : BlockRef{base + (c - half) * kQK, 2, d, m};
  }
}

constexpr bool is_4bit(int F) { return F == kQ4_0 || F == kQ4_1 || F == kQ4; }

// Software prefetch of the weights into L2 (prefetcht1), this far ahead of the bytes being read
// in each row. Measured on the llama-125m shape's decode step (2 threads, weights streamed from
// DRAM): prefetching into L2 instead of L1 made the Q8_0 step 15% and the Q4_0 step 20-25%
// faster; 4-bit rows (432 bytes at K = 768) want the prefetch twice as far ahead as Q8_0's
// (816 bytes), and none at all is slower by a third. A Q8_0 row read alone (R = 1, see
// columns) wants it closer: 1.5 KiB (1 and 2 KiB were within the noise of it, 4 KiB slower).
template <int F, int R>
constexpr int64_t prefetch_distance() {
  if constexpr (is_4bit(F)) return 8192;
  return R == 1 ? 1536 : 4096;
}
template <int F, int R>
inline void prefetch_ahead(const uint8_t* p) {
  __builtin_prefetch(p + prefetch_distance<F, R>(), 0, 2);
}

// How the activations enter the products (template argument A).
enum Arith : int { kFloatAct = 0, kInt8Act = 1, kInt16Act = 2 };

// The activations of m rows, prepared once per call.
struct Acts {
  const float* x;        // [m, K]
  const int8_t* qx;      // [m, K] (int8 activations)
  const int16_t* qw;     // [m, K] (int16 activations)
  const float* dx;       // [m, K/32] (int8, int16 activations)
  const float* sx;       // [m, K/32]: dx * sum(qx) (int8, int16 activations) or sum(x) (float)
  const int32_t* sq;     // [m, K/32]: sum(qx) (int16 activations)
  int64_t k;
};

// The 32 values of a block as signed bytes (scalar path, and the reference for the others).
template <int F>
inline void block_values(const BlockRef& r, int8_t* v) {
  if constexpr (!is_4bit(F)) {
    std::memcpy(v, r.p, kQK);
  } else if (r.nib == 0) {
    for (int j = 0; j < 16; ++j) {
      v[j] = int8_t(r.p[j] & 0x0F);
      v[j + 16] = int8_t(r.p[j] >> 4);
    }
  } else {
    const int shift = r.nib == 1 ? 0 : 4;
    for (int j = 0; j < kQK; ++j) v[j] = int8_t((r.p[j] >> shift) & 0x0F);
  }
}

#if defined(__AVX2__)

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int F>
inline __m256i load_block(const BlockRef& r) {
  if constexpr (!is_4bit(F)) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r.p));
  } else {
    const __m256i low = _mm256_set1_epi8(0x0F);
    if (r.nib == 0) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r.p));
      const __m256i both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
      return _mm256_and_si256(both, low);
    }
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r.p));
    return _mm256_and_si256(r.nib == 1 ? b : _mm256_srli_epi16(b, 4), low);
  }
}

// acc + u . s per group of 4 bytes (u unsigned, s signed).
inline __m256i dot_acc(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__) || defined(__AVXVNNI__)
constexpr bool kVnni = true;
#else
constexpr bool kVnni = false;
#endif

// Without VNNI: the int16 sums of adjacent pairs of u . s for two products (maddubs each)
// added in int16 before they are widened (one madd for both): exact while every sum fits,
// as it does for 4-bit weights (0..15) and activations of at most 127 in magnitude (two
// pairs: 2 * 2 * 15 * 127 = 7620). Zen's one integer multiply pipe then does three multiplies
// for two products instead of four.
inline __m256i pair_sums16(__m256i u0, __m256i s0, __m256i u1, __m256i s1) {
  return _mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1));
}
inline __m256i widen16(__m256i v) { return _mm256_madd_epi16(v, _mm256_set1_epi16(1)); }

// 8 int32 partial sums of w . x: w unsigned (4-bit) or signed (8-bit), x signed.
template <int F>
inline __m256i dot_i8(__m256i w, __m256i x) {
  if constexpr (is_4bit(F)) return dot_acc(_mm256_setzero_si256(), w, x);
  // |w| and x with w's sign: maddubs takes its first operand unsigned
  return dot_acc(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
}

// Symmetric 4-bit values shifted to -8..7 (float activations), others as they are.
template <int F, bool Min>
inline __m256i centred(__m256i w) {
  if constexpr (is_4bit(F) && !Min) return _mm256_sub_epi8(w, _mm256_set1_epi8(8));
  return w;
}

// The float16 scales (and mins) of blocks b and b + 1 of row n, converted together:
// [d0, d1, -, -] for symmetric blocks, [d0, m0, d1, m1] for blocks with a min.
template <int F, bool Min>
inline __m128 pair_scales(const Weights& w, int64_t n, int64_t b) {
  uint64_t h;
  if constexpr (F == kQ8_0) {
    const uint8_t* p = w.q + n * w.row_bytes + b * 34;
    h = uint64_t(read_u16(p)) | uint64_t(read_u16(p + 34)) << 16;
  } else if constexpr (F == kQ4_0) {
    const uint8_t* p = w.q + n * w.row_bytes + b * 18;
    h = uint64_t(read_u16(p)) | uint64_t(read_u16(p + 18)) << 16;
  } else if constexpr (F == kQ4_1) {
    const uint8_t* p = w.q + n * w.row_bytes + b * 20;
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 20, 4);
    h = uint64_t(lo) | uint64_t(hi) << 32;
  } else {  // q4, groups of 32: block b's scale is the group's
    const int64_t i = n * w.groups + b;
    if constexpr (Min) {
      h = uint64_t(w.scales_f16[i]) | uint64_t(w.mins_f16[i]) << 16 |
          uint64_t(w.scales_f16[i + 1]) << 32 | uint64_t(w.mins_f16[i + 1]) << 48;
    } else {
      h = uint64_t(w.scales_f16[i]) | uint64_t(w.scales_f16[i + 1]) << 16;
    }
  }
  return _mm_cvtph_ps(_mm_cvtsi64_si128(int64_t(h)));
}

// Int8 activations on 4-bit blocks in GGUF order, two blocks (b, b + 1) of a row at a time:
// one 256-bit vector holds both blocks' low nibbles, another their high nibbles, so that the
// int32 lanes 0-3 sum block b and lanes 4-7 block b + 1, and the scales, the zero point and
// the conversion to float are applied to both at once. Symmetric blocks (w = (q - 8) d) take
// the zero point in integers: dot(q, x) - 8 sum(x), exact; blocks with a min (w = q d + m) add
// m sx per lane, a quarter of it in each of the block's four lanes. Adds to acc; returns the
// number of blocks done (all but an odd last one).
template <int F, bool Min, int R, int M>
inline int64_t pairs_4bit(const Weights& w, int64_t n, const Acts& a, __m256 (&acc)[R][M]) {
  const int64_t blocks = a.k / kQK;
  const int64_t end = blocks & ~int64_t(1);
  const __m256i low = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
  const __m256i zero = _mm256_setzero_si256();
  const __m256i d_lanes = Min ? _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)
                              : _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  const __m256i m_lanes = _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3);
  for (int64_t b = 0; b < end; b += 2) {
    __m256i lo[R], hi[R];
    __m256 dv[R], mv[R];
    for (int r = 0; r < R; ++r) {
      const BlockRef r0 = block_ref<F, Min>(w, n + r, b), r1 = block_ref<F, Min>(w, n + r, b + 1);
      const __m256 h = _mm256_castps128_ps256(pair_scales<F, Min>(w, n + r, b));
      prefetch_ahead<F, R>(r0.p);
      const __m256i v = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r0.p))),
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(r1.p)), 1);
      lo[r] = _mm256_and_si256(v, low);
      hi[r] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
      dv[r] = _mm256_permutevar8x32_ps(h, d_lanes);
      if constexpr (Min) mv[r] = _mm256_permutevar8x32_ps(h, m_lanes);
    }
    for (int mm = 0; mm < M; ++mm) {
      // elements 0-15 of both blocks, then 16-31: 128-bit loads into the two lanes (a
      // lane-crossing permute of two 256-bit loads costs Zen 1 eight micro-ops)
      const int8_t* xp = a.qx + mm * a.k + b * kQK;
      const __m128i* x16 = reinterpret_cast<const __m128i*>(xp);
      const __m256i xlo = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128(x16)), _mm_loadu_si128(x16 + 2), 1);
      const __m256i xhi = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128(x16 + 1)), _mm_loadu_si128(x16 + 3), 1);
      const float* dxp = a.dx + mm * blocks + b;
      const __m256 dxv = _mm256_blend_ps(_mm256_set1_ps(dxp[0]), _mm256_set1_ps(dxp[1]), 0xF0);
      __m256i corr = zero;
      __m256 sxv = _mm256_setzero_ps();
      if constexpr (Min) {
        const float* sxp = a.sx + mm * blocks + b;
        sxv = _mm256_mul_ps(_mm256_set1_ps(0.25f),
                            _mm256_blend_ps(_mm256_set1_ps(sxp[0]), _mm256_set1_ps(sxp[1]), 0xF0));
      } else if constexpr (kVnni) {
        corr = dot_acc(dot_acc(zero, eight, xlo), eight, xhi);  // 8 sum(x), lane by lane
      } else {
        corr = pair_sums16(eight, xlo, eight, xhi);  // the same in int16 pair sums
      }
      for (int r = 0; r < R; ++r) {
        __m256i s;
        if constexpr (kVnni) {
          s = dot_acc(dot_acc(zero, lo[r], xlo), hi[r], xhi);
          if constexpr (!Min) s = _mm256_sub_epi32(s, corr);
        } else {  // |sums| <= 7620 + 4064: the zero point too in int16
          __m256i s16 = pair_sums16(lo[r], xlo, hi[r], xhi);
          if constexpr (!Min) s16 = _mm256_sub_epi16(s16, corr);
          s = widen16(s16);
        }
        acc[r][mm] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dv[r], dxv), acc[r][mm]);
        if constexpr (Min) acc[r][mm] = _mm256_fmadd_ps(mv[r], sxv, acc[r][mm]);
      }
    }
  }
  return end;
}

// p[0], p[1] in the low lanes.
inline __m256 load2(const float* p) {
  return _mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))));
}

// Int8 activations on Q8_0 blocks, two blocks (b, b + 1) of a row at a time: each block's dot
// product in 8 int32 lanes, folded to 4 (lanes 0, 1, 4, 5 block b; 2, 3, 6, 7 block b + 1:
// the fold stays within 128-bit lanes, which Zen 1 does in one micro-op where a lane-crossing
// permute takes eight) so that scaling and conversion to float serve both. With VNNI the
// signed weights enter vpdpbusd as w + 128 (unsigned) and 128 sum(x), folded alike, is
// subtracted; without it (maddubs would saturate) the signs move to the activations as in
// dot_i8. Adds to acc; returns the number of blocks done (all but an odd last one).
inline __m256i fold_pair(__m256i s0, __m256i s1) {
  return _mm256_add_epi32(_mm256_unpacklo_epi64(s0, s1), _mm256_unpackhi_epi64(s0, s1));
}

// [v0, v0, v1, v1] in both 128-bit lanes: a pair's two values in fold_pair's lanes.
inline __m256 fold_lanes(__m128 v) {
  const __m128 u = _mm_unpacklo_ps(v, v);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(u), u, 1);
}

template <int R, int M>
inline int64_t pairs_q8(const Weights& w, int64_t n, const Acts& a, __m256 (&acc)[R][M]) {
  const int64_t blocks = a.k / kQK;
  const int64_t end = blocks & ~int64_t(1);
  const __m256i zero = _mm256_setzero_si256();
  constexpr bool kBiased = kVnni;
  const __m256i bias = _mm256_set1_epi8(char(0x80));
  for (int64_t b = 0; b < end; b += 2) {
    __m256i w0[R], w1[R];
    __m256 dv[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = w.q + (n + r) * w.row_bytes + b * 34;
      prefetch_ahead<kQ8_0, R>(p);
      w0[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
      w1[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 36));
      if constexpr (kBiased) w0[r] = _mm256_xor_si256(w0[r], bias), w1[r] = _mm256_xor_si256(w1[r], bias);
      dv[r] = fold_lanes(pair_scales<kQ8_0, false>(w, n + r, b));
    }
    for (int mm = 0; mm < M; ++mm) {
      const int8_t* xp = a.qx + mm * a.k + b * kQK;
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + kQK));
      const __m256 dxv = fold_lanes(_mm256_castps256_ps128(load2(a.dx + mm * blocks + b)));
      __m256i corr = zero;
      if constexpr (kBiased) corr = fold_pair(dot_acc(zero, bias, x0), dot_acc(zero, bias, x1));
      for (int r = 0; r < R; ++r) {
        __m256i s;
        if constexpr (kBiased) {
          s = _mm256_sub_epi32(fold_pair(dot_acc(zero, w0[r], x0), dot_acc(zero, w1[r], x1)), corr);
        } else {
          s = fold_pair(dot_i8<kQ8_0>(w0[r], x0), dot_i8<kQ8_0>(w1[r], x1));
        }
        acc[r][mm] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dv[r], dxv), acc[r][mm]);
      }
    }
  }
  return end;
}

// acc + a . b per pair of int16 lanes (int32 lanes; exact: no saturation).
inline __m256i dot16_acc(__m256i acc, __m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(acc, a, b);
#elif defined(__AVXVNNI__)
  return _mm256_dpwssd_avx_epi32(acc, a, b);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

// The 32 values of a block as int16, elements 0..15 in lo and 16..31 in hi (4-bit: 0..15).
template <int F>
inline void load_block16(const BlockRef& r, __m256i& lo, __m256i& hi) {
  const __m128i* p = reinterpret_cast<const __m128i*>(r.p);
  if constexpr (!is_4bit(F)) {
    lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(p));
    hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(p + 1));
  } else {
    const __m256i low = _mm256_set1_epi16(0x0F);
    if (r.nib == 0) {  // byte j: element j in its low nibble, j + 16 in its high one
      const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128(p));
      lo = _mm256_and_si256(v, low);
      hi = _mm256_srli_epi16(v, 4);
    } else {
      const __m256i v0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(p));
      const __m256i v1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(p + 1));
      if (r.nib == 1) {
        lo = _mm256_and_si256(v0, low), hi = _mm256_and_si256(v1, low);
      } else {
        lo = _mm256_srli_epi16(v0, 4), hi = _mm256_srli_epi16(v1, 4);
      }
    }
  }
}

// The int32 vector that starts the dot product of a symmetric 4-bit block (values q = w + 8)
// with int16 activations: -8 sum(qx) in one lane, so that the sum is dot(q - 8, qx), exact.
inline __m256i centring16(int32_t sum_qx) {
  return _mm256_setr_epi32(-8 * sum_qx, 0, 0, 0, 0, 0, 0, 0);
}

// The float16 scales (and mins) of blocks b and b + 1 of rows n..n+R-1 (R <= 4), converted
// together in the lanes of pairs_4bit16's sums: lane r block b of row r, lane 4 + r block
// b + 1 (lanes of missing rows 0). Read as 32-bit words (GGUF: a block's d and the next two
// bytes, its m for Q4_1; q4: a row's two adjacent scales, or mins), then gathered in lanes.
template <int F, bool Min, int R>
inline void quad_scales(const Weights& w, int64_t n, int64_t b, __m256& d, __m256& m) {
  uint32_t h0[4] = {}, h1[4] = {};
  for (int r = 0; r < R; ++r) {
    if constexpr (F == kQ4) {
      const int64_t i = (n + r) * w.groups + b;
      std::memcpy(&h0[r], w.scales_f16 + i, 4);
      if constexpr (Min) std::memcpy(&h1[r], w.mins_f16 + i, 4);
    } else {
      constexpr int64_t kBytes = F == kQ4_0 ? 18 : 20;
      const uint8_t* p = w.q + (n + r) * w.row_bytes + b * kBytes;
      std::memcpy(&h0[r], p, 4);
      std::memcpy(&h1[r], p + kBytes, 4);
    }
  }
  // the low 16 bits of each word, then the high ones
  const __m128i split = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
  const __m128i a0 = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h0)), split);
  const __m128i a1 = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h1)), split);
  if constexpr (F == kQ4) {  // a0: the scales [block b of rows 0-3, block b + 1], a1 the mins
    d = _mm256_cvtph_ps(a0);
    if constexpr (Min) m = _mm256_cvtph_ps(a1);
  } else {  // a0: [d of block b, m of block b], a1 the same for block b + 1
    d = _mm256_cvtph_ps(_mm_unpacklo_epi64(a0, a1));
    if constexpr (Min) m = _mm256_cvtph_ps(_mm_unpackhi_epi64(a0, a1));
  }
}

// Int16 activations on 4-bit blocks in GGUF order, two blocks (b, b + 1) of R <= 4 rows at a
// time. A row's two blocks (16 + 16 bytes) in one vector, unpacked in lanes to int16 (bytes
// 0-7 of each block, then 8-15), each byte's low nibble (elements 0-15) and high nibble
// (16-31): four vectors whose lower halves are block b's and upper halves block b + 1's; the
// activations are stored in that order (quantize_rows16's pair order), so that int32 lanes
// 0-3 sum block b and 4-7 block b + 1. The R rows' sums are then reduced together
// (horizontal adds, exact in integers) to one vector, lane r block b of row r and lane 4 + r
// block b + 1, converted and scaled at once: acc[mm] += float(dot) d dx (+ m sx with a min).
// The symmetric zero point is taken in integers: dot(q - 8, qx) = dot(q, qx) - 8 sum(qx).
// Every output's sequence of operations is the same whatever R (missing rows are zeros).
// Returns the number of blocks done (all but an odd last one).
template <int F, bool Min, int R, int M>
inline int64_t pairs_4bit16(const Weights& w, int64_t n, const Acts& a, __m256 (&acc)[M]) {
  static_assert(R <= 4);
  const int64_t blocks = a.k / kQK;
  const int64_t end = blocks & ~int64_t(1);
  const __m256i low = _mm256_set1_epi16(0x0F), zero = _mm256_setzero_si256();
  const __m256i halves = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  for (int64_t b = 0; b < end; b += 2) {
    __m256i wv[R][4];
    for (int r = 0; r < R; ++r) {
      const BlockRef r0 = block_ref<F, Min>(w, n + r, b), r1 = block_ref<F, Min>(w, n + r, b + 1);
      prefetch_ahead<F, R>(r0.p);
      const __m256i v = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r0.p))),
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(r1.p)), 1);
      const __m256i u0 = _mm256_unpacklo_epi8(v, zero), u1 = _mm256_unpackhi_epi8(v, zero);
      wv[r][0] = _mm256_and_si256(u0, low);  // elements 0-7
      wv[r][1] = _mm256_and_si256(u1, low);  // 8-15
      wv[r][2] = _mm256_srli_epi16(u0, 4);   // 16-23
      wv[r][3] = _mm256_srli_epi16(u1, 4);   // 24-31
    }
    __m256 dv, mv = _mm256_setzero_ps();
    quad_scales<F, Min, R>(w, n, b, dv, mv);
    for (int mm = 0; mm < M; ++mm) {
      // the activations of both blocks in pair order (quantize_rows16): elements 0-7 of
      // block b then of b + 1, 8-15, 16-23, 24-31
      const __m256i* xp = reinterpret_cast<const __m256i*>(a.qw + mm * a.k + b * kQK);
      const __m256i xv[4] = {_mm256_loadu_si256(xp), _mm256_loadu_si256(xp + 1),
                             _mm256_loadu_si256(xp + 2), _mm256_loadu_si256(xp + 3)};
      __m256i s[4];
      for (int r = 0; r < 4; ++r) {
        if (r >= R) {
          s[r] = zero;
          continue;
        }
        s[r] = _mm256_madd_epi16(wv[r][0], xv[0]);
        s[r] = dot16_acc(s[r], wv[r][1], xv[1]);
        s[r] = dot16_acc(s[r], wv[r][2], xv[2]);
        s[r] = dot16_acc(s[r], wv[r][3], xv[3]);
      }
      // lanes 0-3: block b of rows 0-3, 4-7: block b + 1
      __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
      const int64_t i = mm * blocks + b;  // the two blocks' dx, sq, sx
      if constexpr (!Min) {
        const __m256i sq = _mm256_permutevar8x32_epi32(
            _mm256_castsi128_si256(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a.sq + i))),
            halves);  // [sq0 x4, sq1 x4]
        t = _mm256_sub_epi32(t, _mm256_slli_epi32(sq, 3));
      }
      const __m256 dxv = _mm256_permutevar8x32_ps(load2(a.dx + i), halves);
      acc[mm] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(dv, dxv), acc[mm]);
      if constexpr (Min) {
        acc[mm] = _mm256_fmadd_ps(mv, _mm256_permutevar8x32_ps(load2(a.sx + i), halves), acc[mm]);
      }
    }
  }
  return end;
}

// Int16 activations on Q8_0 blocks, two at a time: each block widened to int16 (two vectors,
// elements 0-15 and 16-31), its 8 int32 partial sums folded with the other block's as in
// pairs_q8 (lanes 0-3 block b, 4-7 block b + 1), one scaling and conversion for both.
template <int R, int M>
inline int64_t pairs_q8_16(const Weights& w, int64_t n, const Acts& a, __m256 (&acc)[R][M]) {
  const int64_t blocks = a.k / kQK;
  const int64_t end = blocks & ~int64_t(1);
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t b = 0; b < end; b += 2) {
    __m256i wv[R][4];
    __m256 dv[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = w.q + (n + r) * w.row_bytes + b * 34;
      prefetch_ahead<kQ8_0, R>(p);
      const __m128i* q0 = reinterpret_cast<const __m128i*>(p + 2);
      const __m128i* q1 = reinterpret_cast<const __m128i*>(p + 36);
      wv[r][0] = _mm256_cvtepi8_epi16(_mm_loadu_si128(q0));
      wv[r][1] = _mm256_cvtepi8_epi16(_mm_loadu_si128(q0 + 1));
      wv[r][2] = _mm256_cvtepi8_epi16(_mm_loadu_si128(q1));
      wv[r][3] = _mm256_cvtepi8_epi16(_mm_loadu_si128(q1 + 1));
      dv[r] = fold_lanes(pair_scales<kQ8_0, false>(w, n + r, b));
    }
    for (int mm = 0; mm < M; ++mm) {
      const __m256i* xp = reinterpret_cast<const __m256i*>(a.qw + mm * a.k + b * kQK);
      const __m256i x0 = _mm256_loadu_si256(xp), x1 = _mm256_loadu_si256(xp + 1);
      const __m256i x2 = _mm256_loadu_si256(xp + 2), x3 = _mm256_loadu_si256(xp + 3);
      const __m256 dxv = fold_lanes(_mm256_castps256_ps128(load2(a.dx + mm * blocks + b)));
      for (int r = 0; r < R; ++r) {
        const __m256i s0 = dot16_acc(dot16_acc(zero, wv[r][0], x0), wv[r][1], x1);
        const __m256i s1 = dot16_acc(dot16_acc(zero, wv[r][2], x2), wv[r][3], x3);
        acc[r][mm] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold_pair(s0, s1)),
                                     _mm256_mul_ps(dv[r], dxv), acc[r][mm]);
      }
    }
  }
  return end;
}

// y[mm * ld_y + r] for R weight rows from row n, M input rows.
template <int F, bool Min, int A, int R, int M>
void tile(const Weights& w, int64_t n, const Acts& a, float* y, int64_t ld_y) {
  const int64_t blocks = a.k / kQK;
  __m256 acc[R][M];
  float off[R][M];  // the m * sx terms
  for (int r = 0; r < R; ++r)
    for (int mm = 0; mm < M; ++mm) acc[r][mm] = _mm256_setzero_ps(), off[r][mm] = 0.f;
  __m256 pacc[M];  // pairs_4bit16's sums: lane r row r's even blocks, 4 + r its odd ones
  for (int mm = 0; mm < M; ++mm) pacc[mm] = _mm256_setzero_ps();
  int64_t b0 = 0;
  if constexpr (A == kInt8Act && is_4bit(F)) {
    if (F != kQ4 || w.group == kQK) b0 = pairs_4bit<F, Min, R, M>(w, n, a, acc);  // GGUF order
  }
  if constexpr (A == kInt8Act && F == kQ8_0) b0 = pairs_q8<R, M>(w, n, a, acc);
  if constexpr (A == kInt16Act && is_4bit(F)) {
    if (F != kQ4 || w.group == kQK) b0 = pairs_4bit16<F, Min, R, M>(w, n, a, pacc);
  }
  if constexpr (A == kInt16Act && F == kQ8_0) b0 = pairs_q8_16<R, M>(w, n, a, acc);
  for (int64_t b = b0; b < blocks; ++b) {
    BlockRef ref[R];
    for (int r = 0; r < R; ++r) {
      ref[r] = block_ref<F, Min>(w, n + r, b);
      prefetch_ahead<F, R>(ref[r].p);
    }
    if constexpr (A == kInt16Act) {
      __m256i lo[R], hi[R];
      for (int r = 0; r < R; ++r) load_block16<F>(ref[r], lo[r], hi[r]);
      for (int mm = 0; mm < M; ++mm) {
        const __m256i* xp = reinterpret_cast<const __m256i*>(a.qw + mm * a.k + b * kQK);
        const __m256i xlo = _mm256_loadu_si256(xp), xhi = _mm256_loadu_si256(xp + 1);
        const float dx = a.dx[mm * blocks + b];
        __m256i start = _mm256_setzero_si256();
        if constexpr (is_4bit(F) && !Min) start = centring16(a.sq[mm * blocks + b]);
        for (int r = 0; r < R; ++r) {
          const __m256i s = dot16_acc(dot16_acc(start, lo[r], xlo), hi[r], xhi);
          acc[r][mm] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(ref[r].d * dx),
                                       acc[r][mm]);
          if constexpr (is_4bit(F) && Min) off[r][mm] += ref[r].m * a.sx[mm * blocks + b];
        }
      }
      continue;
    }
    __m256i wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load_block<F>(ref[r]);
    if constexpr (A == kInt8Act) {
      for (int mm = 0; mm < M; ++mm) {
        const __m256i xv =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qx + mm * a.k + b * kQK));
        const float dx = a.dx[mm * blocks + b];
        for (int r = 0; r < R; ++r) {
          const __m256 s = _mm256_cvtepi32_ps(dot_i8<F>(wv[r], xv));
          acc[r][mm] = _mm256_fmadd_ps(s, _mm256_set1_ps(ref[r].d * dx), acc[r][mm]);
          if constexpr (is_4bit(F)) off[r][mm] += ref[r].m * a.sx[mm * blocks + b];
        }
      }
    } else {
      __m256 wf[R][4];
      for (int r = 0; r < R; ++r) {
        const __m256i c = centred<F, Min>(wv[r]);
        const __m128i lo = _mm256_castsi256_si128(c), hi = _mm256_extracti128_si256(c, 1);
        wf[r][0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
        wf[r][1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo)));
        wf[r][2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
        wf[r][3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi)));
      }
      for (int mm = 0; mm < M; ++mm) {
        const float* xp = a.x + mm * a.k + b * kQK;
        const __m256 x0 = _mm256_loadu_ps(xp), x1 = _mm256_loadu_ps(xp + 8);
        const __m256 x2 = _mm256_loadu_ps(xp + 16), x3 = _mm256_loadu_ps(xp + 24);
        for (int r = 0; r < R; ++r) {
          __m256 s = _mm256_mul_ps(wf[r][0], x0);
          s = _mm256_fmadd_ps(wf[r][1], x1, s);
          s = _mm256_fmadd_ps(wf[r][2], x2, s);
          s = _mm256_fmadd_ps(wf[r][3], x3, s);
          acc[r][mm] = _mm256_fmadd_ps(s, _mm256_set1_ps(ref[r].d), acc[r][mm]);
          if constexpr (is_4bit(F) && Min) off[r][mm] += ref[r].m * a.sx[mm * blocks + b];
        }
      }
    }
  }
  for (int mm = 0; mm < M; ++mm) {
    float p[8];
    _mm256_storeu_ps(p, pacc[mm]);
    for (int r = 0; r < R; ++r)
      y[mm * ld_y + r] = hsum(acc[r][mm]) + off[r][mm] + (p[r] + p[4 + r]);
  }
}

#else  // no AVX2: the same arithmetic, one value at a time

template <int F, bool Min, int A, int R, int M>
void tile(const Weights& w, int64_t n, const Acts& a, float* y, int64_t ld_y) {
  const int64_t blocks = a.k / kQK;
  float acc[R][M] = {}, off[R][M] = {};
  int8_t v[kQK];
  for (int64_t b = 0; b < blocks; ++b) {
    for (int r = 0; r < R; ++r) {
      const BlockRef ref = block_ref<F, Min>(w, n + r, b);
      block_values<F>(ref, v);
      for (int mm = 0; mm < M; ++mm) {
        if constexpr (A == kInt8Act) {
          const int8_t* xq = a.qx + mm * a.k + b * kQK;
          int32_t s = 0;
          for (int j = 0; j < kQK; ++j) s += int32_t(v[j]) * int32_t(xq[j]);
          acc[r][mm] += float(s) * (ref.d * a.dx[mm * blocks + b]);
          if constexpr (is_4bit(F)) off[r][mm] += ref.m * a.sx[mm * blocks + b];
        } else if constexpr (A == kInt16Act) {
          // the symmetric 4-bit zero point in integers, a min as m sx (as the AVX2 path)
          const int16_t* xq = a.qw + mm * a.k + b * kQK;
          const int centre = (is_4bit(F) && !Min) ? 8 : 0;
          int32_t s = 0;
          for (int j = 0; j < kQK; ++j) s += int32_t(v[j] - centre) * int32_t(xq[j]);
          acc[r][mm] += float(s) * (ref.d * a.dx[mm * blocks + b]);
          if constexpr (is_4bit(F) && Min) off[r][mm] += ref.m * a.sx[mm * blocks + b];
        } else {
          const float* xp = a.x + mm * a.k + b * kQK;
          const int centre = (is_4bit(F) && !Min) ? 8 : 0;
          float s = 0.f;
          for (int j = 0; j < kQK; ++j) s += float(v[j] - centre) * xp[j];
          acc[r][mm] += s * ref.d;
          if constexpr (is_4bit(F) && Min) off[r][mm] += ref.m * a.sx[mm * blocks + b];
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int mm = 0; mm < M; ++mm) y[mm * ld_y + r] = acc[r][mm] + off[r][mm];
}

#endif

// Q4_0 / Q4_1 blocks of eight weight rows interleaved (formats 5 and 6, int8 activations
// only; llm_kernels.reference.interleave8 writes them): rows 8g..8g+7 hold, per block b, the
// eight rows' scales d (8 float16), for Q4_1 their mins m (8 float16), then the packed values
// as four groups j of 32 bytes, each the bytes 4j..4j+3 of the eight rows' blocks in row order
// (byte t of a block: element t in its low nibble, t + 16 in its high). One 256-bit load thus
// holds four values of each of the eight rows for two runs of elements, a broadcast of the
// activations' four matching bytes multiplies all eight rows at once, and each row's sum ends
// in its own lane: no horizontal sums, the eight scales converted in one instruction. The
// int16 pair sums of a block's eight multiplies are added before they are widened (at most
// 8 * 2 * 15 * 127 = 30480: exact). Per block: y += d dx dot(q, qx) + m sx, with m = -8 d for
// Q4_0 (the zero point in floats, where the GGUF-order kernels take it in integers: the same
// product up to float32 rounding). Measured against the GGUF-order kernel on the 2026-12-02
// Zen VM (no VNNI): docs/benchmarks.md.
template <bool Min>
constexpr int64_t x8_block_bytes() { return Min ? 160 : 144; }
// Every cache line of the interleaved blocks is prefetched this far ahead: one line per
// block (a 1 KiB distance) left a single thread at 3.5 GB/s from DRAM and the m = 1 product
// at 6.2 ns a block; every line 4 KiB ahead, 3.2 ns (8 KiB: 3.4) on the 2026-12-02 Zen VM.
constexpr int64_t kX8Prefetch = 4096;

#if defined(__AVX2__)
template <bool Min, int M>
void tile_x8(const uint8_t* group, const Acts& a, float* y, int64_t ld_y) {
  constexpr int64_t kB = x8_block_bytes<Min>();
  constexpr int64_t kValues = Min ? 32 : 16;  // where the packed values start in a block
  const int64_t blocks = a.k / kQK;
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[M];
  for (int mm = 0; mm < M; ++mm) acc[mm] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = group + b * kB;
    for (int64_t o = 0; o < kB; o += 64) __builtin_prefetch(p + kX8Prefetch + o, 0, 2);
    const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256 m8 = Min ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)))
                          : _mm256_mul_ps(d8, _mm256_set1_ps(-8.f));
    __m256i s16[M];
    for (int mm = 0; mm < M; ++mm) s16[mm] = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + kValues + 32 * j));
      const __m256i lo = _mm256_and_si256(v, low);                         // elements 4j..4j+3
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);  // 16 + 4j..
      for (int mm = 0; mm < M; ++mm) {
        const int8_t* xb = a.qx + mm * a.k + b * kQK;
        int32_t xl, xh;
        std::memcpy(&xl, xb + 4 * j, 4);
        std::memcpy(&xh, xb + 16 + 4 * j, 4);
        s16[mm] = _mm256_add_epi16(
            s16[mm], _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(xl)),
                                      _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xh))));
      }
    }
    for (int mm = 0; mm < M; ++mm) {
      const int64_t i = mm * blocks + b;
      const __m256i s = _mm256_madd_epi16(s16[mm], ones);  // lane r: row r's dot product
      acc[mm] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d8, _mm256_set1_ps(a.dx[i])),
                                acc[mm]);
      acc[mm] = _mm256_fmadd_ps(m8, _mm256_set1_ps(a.sx[i]), acc[mm]);
    }
  }
  for (int mm = 0; mm < M; ++mm) _mm256_storeu_ps(y + mm * ld_y, acc[mm]);
}

// Float activations (prompts: the exact dequantized product up to float32 rounding): each
// group's bytes transposed in registers so that one vector holds one element of the eight
// rows, widened to float and multiplied by that element of x broadcast; per block
// y += d sum(q x) + m sum(x) (m = -8 d for Q4_0).
template <bool Min, int M>
void tile_x8_float(const uint8_t* group, const Acts& a, float* y, int64_t ld_y) {
  constexpr int64_t kB = x8_block_bytes<Min>();
  constexpr int64_t kValues = Min ? 32 : 16;
  const int64_t blocks = a.k / kQK;
  const __m256i low = _mm256_set1_epi8(0x0F);
  // per 128-bit lane (four rows): byte 4r + e -> 4e + r
  const __m256i transpose = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                             0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m256 acc[M];
  for (int mm = 0; mm < M; ++mm) acc[mm] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = group + b * kB;
    for (int64_t o = 0; o < kB; o += 64) __builtin_prefetch(p + kX8Prefetch + o, 0, 2);
    const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256 m8 = Min ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)))
                          : _mm256_mul_ps(d8, _mm256_set1_ps(-8.f));
    __m256 sum[M];
    for (int mm = 0; mm < M; ++mm) sum[mm] = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + kValues + 32 * j));
      for (int h = 0; h < 2; ++h) {  // low nibbles: elements 4j..4j+3; high: 16 + 4j..
        const __m256i q = _mm256_and_si256(h ? _mm256_srli_epi16(v, 4) : v, low);
        const __m256i t = _mm256_shuffle_epi8(q, transpose);
        const __m128i t0 = _mm256_castsi256_si128(t), t1 = _mm256_extracti128_si256(t, 1);
        const __m128i e01 = _mm_unpacklo_epi32(t0, t1), e23 = _mm_unpackhi_epi32(t0, t1);
        const __m256 w[4] = {_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(e01)),
                             _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(e01, 8))),
                             _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(e23)),
                             _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(e23, 8)))};
        const int64_t first = b * kQK + 16 * h + 4 * j;
        for (int mm = 0; mm < M; ++mm) {
          const float* xp = a.x + mm * a.k + first;
          for (int e = 0; e < 4; ++e) sum[mm] = _mm256_fmadd_ps(w[e], _mm256_set1_ps(xp[e]), sum[mm]);
        }
      }
    }
    for (int mm = 0; mm < M; ++mm) {
      acc[mm] = _mm256_fmadd_ps(sum[mm], d8, acc[mm]);
      acc[mm] = _mm256_fmadd_ps(m8, _mm256_set1_ps(a.sx[mm * blocks + b]), acc[mm]);
    }
  }
  for (int mm = 0; mm < M; ++mm) _mm256_storeu_ps(y + mm * ld_y, acc[mm]);
}
#else
template <bool Min, int M>
void tile_x8(const uint8_t* group, const Acts& a, float* y, int64_t ld_y) {
  constexpr int64_t kB = x8_block_bytes<Min>();
  constexpr int64_t kValues = Min ? 32 : 16;
  const int64_t blocks = a.k / kQK;
  float acc[M][8] = {};
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = group + b * kB;
    for (int r = 0; r < 8; ++r) {
      const float d = half_to_float(read_u16(p + 2 * r));
      const float m = Min ? half_to_float(read_u16(p + 16 + 2 * r)) : -8.f * d;
      for (int mm = 0; mm < M; ++mm) {
        const int8_t* xb = a.qx + mm * a.k + b * kQK;
        int32_t dot = 0;
        for (int j = 0; j < 4; ++j)
          for (int t = 0; t < 4; ++t) {
            const uint8_t byte = p[kValues + 32 * j + 4 * r + t];
            dot += int32_t(byte & 0x0F) * xb[4 * j + t] + int32_t(byte >> 4) * xb[16 + 4 * j + t];
          }
        const int64_t i = mm * blocks + b;
        acc[mm][r] += float(dot) * (d * a.dx[i]);
        acc[mm][r] += m * a.sx[i];
      }
    }
  }
  for (int mm = 0; mm < M; ++mm)
    for (int r = 0; r < 8; ++r) y[mm * ld_y + r] = acc[mm][r];
}

template <bool Min, int M>
void tile_x8_float(const uint8_t* group, const Acts& a, float* y, int64_t ld_y) {
  constexpr int64_t kB = x8_block_bytes<Min>();
  constexpr int64_t kValues = Min ? 32 : 16;
  const int64_t blocks = a.k / kQK;
  float acc[M][8] = {};
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = group + b * kB;
    for (int r = 0; r < 8; ++r) {
      const float d = half_to_float(read_u16(p + 2 * r));
      const float m = Min ? half_to_float(read_u16(p + 16 + 2 * r)) : -8.f * d;
      for (int mm = 0; mm < M; ++mm) {
        const float* xb = a.x + mm * a.k + b * kQK;
        float sum = 0.f;
        for (int j = 0; j < 4; ++j)
          for (int t = 0; t < 4; ++t) {
            const uint8_t byte = p[kValues + 32 * j + 4 * r + t];
            sum += float(byte & 0x0F) * xb[4 * j + t] + float(byte >> 4) * xb[16 + 4 * j + t];
          }
        acc[mm][r] += sum * d;
        acc[mm][r] += m * a.sx[mm * blocks + b];
      }
    }
  }
  for (int mm = 0; mm < M; ++mm)
    for (int r = 0; r < 8; ++r) y[mm * ld_y + r] = acc[mm][r];
}
#endif

// Output columns [begin, end) (multiples of 8) of interleaved blocks, four input rows at a time.
template <bool Min, int A>
void columns_x8(const Weights& w, const Acts& a, int64_t m, float* y, int64_t out, int64_t begin,
                int64_t end) {
  const int64_t blocks = a.k / kQK;
  for (int64_t n = begin; n < end; n += 8) {
    const uint8_t* group = w.q + n * w.row_bytes;
    for (int64_t m0 = 0; m0 < m; m0 += 4) {
      Acts am = a;
      am.x = a.x ? a.x + m0 * a.k : nullptr;
      am.qx = a.qx ? a.qx + m0 * a.k : nullptr;
      am.dx = a.dx ? a.dx + m0 * blocks : nullptr;
      am.sx = a.sx + m0 * blocks;
      float* ym = y + m0 * out + n;
      const int64_t rows = std::min<int64_t>(4, m - m0);
      if constexpr (A == kFloatAct) {
        switch (rows) {
          case 1: tile_x8_float<Min, 1>(group, am, ym, out); break;
          case 2: tile_x8_float<Min, 2>(group, am, ym, out); break;
          case 3: tile_x8_float<Min, 3>(group, am, ym, out); break;
          default: tile_x8_float<Min, 4>(group, am, ym, out); break;
        }
      } else {
        switch (rows) {
          case 1: tile_x8<Min, 1>(group, am, ym, out); break;
          case 2: tile_x8<Min, 2>(group, am, ym, out); break;
          case 3: tile_x8<Min, 3>(group, am, ym, out); break;
          default: tile_x8<Min, 4>(group, am, ym, out); break;
        }
      }
    }
  }
}

// R weight rows from row n against all m input rows, four at a time.
template <int F, bool Min, int A, int R>
void tile_rows(const Weights& w, int64_t n, const Acts& a, int64_t m, float* y, int64_t ld_y) {
  for (int64_t m0 = 0; m0 < m; m0 += 4) {
    Acts am = a;
    am.x = a.x ? a.x + m0 * a.k : nullptr;
    am.qx = a.qx ? a.qx + m0 * a.k : nullptr;
    am.qw = a.qw ? a.qw + m0 * a.k : nullptr;
    am.dx = a.dx ? a.dx + m0 * (a.k / kQK) : nullptr;
    am.sx = a.sx ? a.sx + m0 * (a.k / kQK) : nullptr;
    am.sq = a.sq ? a.sq + m0 * (a.k / kQK) : nullptr;
    float* ym = y + m0 * ld_y + n;
    switch (std::min<int64_t>(4, m - m0)) {
      case 1: tile<F, Min, A, R, 1>(w, n, am, ym, ld_y); break;
      case 2: tile<F, Min, A, R, 2>(w, n, am, ym, ld_y); break;
      case 3: tile<F, Min, A, R, 3>(w, n, am, ym, ld_y); break;
      default: tile<F, Min, A, R, 4>(w, n, am, ym, ld_y); break;
    }
  }
}

// Output columns [begin, end): 4 weight rows at a time for one input row (or int16
// activations, whose 4-bit pairs reduce 4 rows' sums together), 2 for more, then 1. One Q8_0
// row at a time for one input row with integer activations: the weights are then read as one
// sequential stream, where four rows side by side make four streams 816 bytes apart, which this
// machine's prefetchers serve far worse (a 104 MB Q8_0 matrix times one row, 2 threads: 16 GB/s
// with four rows against 28-33 with one, in a C++ loop of the same arithmetic; the llama-125m
// Q8_0 decode step's layers 4.5-5.2 ms against 3.0-3.4, its int16 LM head 1.2-1.4 against
// 0.8-1.0). 4-bit rows are half as long and cost more arithmetic per byte: one at a time was
// no faster there.
template <int F, bool Min, int A>
void columns(const Weights& w, const Acts& a, int64_t m, float* y, int64_t out, int64_t begin,
             int64_t end) {
  int64_t n = begin;
  if (F == kQ8_0 && m == 1 && A != kFloatAct) {
    for (; n < end; ++n) tile_rows<F, Min, A, 1>(w, n, a, m, y, out);
    return;
  }
  if (m == 1 || A == kInt16Act) {
    for (; n + 4 <= end; n += 4) tile_rows<F, Min, A, 4>(w, n, a, m, y, out);
  } else {
    for (; n + 2 <= end; n += 2) tile_rows<F, Min, A, 2>(w, n, a, m, y, out);
  }
  for (; n < end; ++n) tile_rows<F, Min, A, 1>(w, n, a, m, y, out);
}

using ColumnsFn = void (*)(const Weights&, const Acts&, int64_t, float*, int64_t, int64_t,
                           int64_t);

template <int A>
ColumnsFn pick(int64_t format, bool has_mins) {
  switch (format) {
    case kQ8_0: return &columns<kQ8_0, false, A>;
    case kQ4_0: return &columns<kQ4_0, false, A>;
    case kQ4_1: return &columns<kQ4_1, true, A>;
    case kQ4_0x8: return &columns_x8<false, A == kFloatAct ? kFloatAct : kInt8Act>;
    case kQ4_1x8: return &columns_x8<true, A == kFloatAct ? kFloatAct : kInt8Act>;
    case kInt8: return &columns<kInt8, false, A>;
    default: return has_mins ? &columns<kQ4, true, A> : &columns<kQ4, false, A>;
  }
}

// Quantize m rows of x per block of 32: qx = round(x / dx) with dx = amax / 127 (ties away
// from zero, as llama.cpp's quantize_row_q8_0), sx = dx * sum(qx); amax over the block, or
// over the whole row when per_row.
void quantize_rows(const float* x, int64_t m, int64_t k, bool per_row, int8_t* qx, float* dx,
                   float* sx) {
  const int64_t blocks = k / kQK;
  float row_amax = 0.f;
  for (int64_t i = 0; i < m * blocks; ++i) {
    const float* xb = x + i * kQK;
    if (per_row && i % blocks == 0) {
      row_amax = 0.f;
      for (int64_t j = 0; j < k; ++j) row_amax = std::max(row_amax, std::fabs(xb[j]));
    }
    float amax = row_amax;
    if (!per_row)
      for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.f;
    const float inv = d != 0.f ? 1.f / d : 0.f;
    // 1 / d overflows to infinity for blocks under about 4e-37 (d subnormal): those divide,
    // as quantize_rows16 does, instead of rounding infinities and NaNs
    const bool tiny = std::isinf(inv);
    int32_t sum = 0;
    for (int j = 0; j < kQK; ++j) {
      const float v = tiny ? xb[j] / d : xb[j] * inv;
      const int8_t q = int8_t(std::clamp(std::lround(v), -127L, 127L));
      qx[i * kQK + j] = q;
      sum += q;
    }
    dx[i] = d;
    sx[i] = d * float(sum);
  }
}

// Quantize m rows of x per block of 32 to int16: qx = round(x / dx) with dx = amax / 32767
// (ties away from zero), sq = sum(qx), sx = dx * sq. A division, not a multiplication by
// 1 / dx, which overflows to infinity for blocks under about 1e-34; clamped to +-32767, which
// x / dx exceeds only where dx is subnormal (blocks under about 4e-34), imprecise. With
// `paired` (4-bit blocks in GGUF order, pairs_4bit16) each two blocks (b, b + 1) of a row (b
// even, an odd last one left as it is) are stored in pair order: elements 0-7 of b, 0-7 of
// b + 1, 8-15 of b, 8-15 of b + 1, then 16-23 and 24-31 alike.
void quantize_rows16(const float* x, int64_t m, int64_t k, bool paired, int16_t* qx, float* dx,
                     float* sx, int32_t* sq) {
  const int64_t blocks = k / kQK;
  int16_t q[2 * kQK];
  for (int64_t i = 0; i < m * blocks;) {
    const bool pair = paired && i % blocks + 1 < blocks;  // blocks i, i + 1 of the same row
    const int n = pair ? 2 : 1;
    for (int h = 0; h < n; ++h) {
      const float* xb = x + (i + h) * kQK;
      float amax = 0.f;
      for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const float d = amax / 32767.f;
      int32_t sum = 0;
      for (int j = 0; j < kQK; ++j) {
        const long v = d != 0.f ? std::lround(xb[j] / d) : 0L;
        q[h * kQK + j] = int16_t(std::clamp(v, -32767L, 32767L));
        sum += q[h * kQK + j];
      }
      dx[i + h] = d;
      sq[i + h] = sum;
      sx[i + h] = d * float(sum);
    }
    int16_t* out = qx + i * kQK;
    if (pair) {
      for (int c = 0; c < 4; ++c) {  // elements 8c..8c+7 of both blocks
        std::memcpy(out + 16 * c, q + 8 * c, 16);
        std::memcpy(out + 16 * c + 8, q + kQK + 8 * c, 16);
      }
    } else {
      std::memcpy(out, q, sizeof(int16_t) * kQK);
    }
    i += n;
  }
}

void block_sums(const float* x, int64_t m, int64_t k, float* sx) {
  for (int64_t i = 0; i < m * (k / kQK); ++i) {
    float s = 0.f;
    for (int j = 0; j < kQK; ++j) s += x[i * kQK + j];
    sx[i] = s;
  }
}

at::Tensor quant_rows(const at::Tensor& x, const at::Tensor& qweight,
                      const std::optional<at::Tensor>& scales,
                      const std::optional<at::Tensor>& mins, int64_t format, int64_t group_size,
                      const std::optional<at::Tensor>& bias, int64_t activations) {
  TORCH_CHECK(format >= kQ8_0 && format <= kQ4_1x8, "quant_rows: unknown format ", format);
  TORCH_CHECK(activations >= 0 && activations <= 3,
              "quant_rows: activations must be 0, 1, 2 or 3, got ", activations);
  const bool int8_activations = activations == 1 || activations == 2;
  const bool int16_activations = activations == 3;
  TORCH_CHECK(x.device().is_cpu() && qweight.device().is_cpu(), "quant_rows: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "quant_rows: x must be float32");
  TORCH_CHECK(qweight.dim() == 2 && qweight.is_contiguous() && qweight.size(0) > 0,
              "quant_rows: qweight must be a contiguous, non-empty 2-D tensor");
  const int64_t out = qweight.size(0);
  const int64_t k = x.size(-1);
  TORCH_CHECK(k > 0 && k % kQK == 0, "quant_rows: K must be a positive multiple of 32, got ", k);
  Weights w{static_cast<const uint8_t*>(qweight.data_ptr()), qweight.size(1), nullptr, nullptr,
            nullptr, 0, 0};
  const bool x8 = format == kQ4_0x8 || format == kQ4_1x8;
  static constexpr int64_t kBlockBytes[] = {34, 18, 20, 0, 0, 18, 20};
  if (format <= kQ4_1 || x8) {
    TORCH_CHECK(qweight.scalar_type() == at::kByte && qweight.size(1) == k / kQK * kBlockBytes[format],
                "quant_rows: GGUF blocks must be uint8 [N, K/32*", kBlockBytes[format], "]");
    TORCH_CHECK(!x8 || out % 8 == 0, "quant_rows: interleaved blocks need N a multiple of 8, got ",
                out);
    TORCH_CHECK(!x8 || activations != 3,
                "quant_rows: interleaved blocks take float or int8 activations (0, 1, 2), got ",
                activations);
  } else if (format == kInt8) {
    TORCH_CHECK(qweight.scalar_type() == at::kChar && qweight.size(1) == k,
                "quant_rows: int8 weights must be int8 [N, K]");
    TORCH_CHECK(scales.has_value() && scales->scalar_type() == at::kFloat &&
                    scales->is_contiguous() && scales->numel() == out,
                "quant_rows: int8 scales must be float32 [N]");
    w.scales_f32 = scales->data_ptr<float>();
  } else {
    TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128,
                "quant_rows: q4 group_size must be 32, 64 or 128");
    TORCH_CHECK(k % group_size == 0, "quant_rows: K must be a multiple of group_size");
    TORCH_CHECK(qweight.scalar_type() == at::kByte && qweight.size(1) == k / 2,
                "quant_rows: q4 weights must be uint8 [N, K/2]");
    w.group = group_size;
    w.groups = k / group_size;
    TORCH_CHECK(scales.has_value() && scales->scalar_type() == at::kHalf &&
                    scales->is_contiguous() && scales->numel() == out * w.groups,
                "quant_rows: q4 scales must be float16 [N, K/G]");
    w.scales_f16 = reinterpret_cast<const uint16_t*>(scales->data_ptr());
    if (mins.has_value() && mins->defined()) {
      TORCH_CHECK(mins->scalar_type() == at::kHalf && mins->is_contiguous() &&
                      mins->numel() == out * w.groups,
                  "quant_rows: q4 mins must be float16 [N, K/G]");
      w.mins_f16 = reinterpret_cast<const uint16_t*>(mins->data_ptr());
    }
  }
  const int64_t m = x.numel() / k;
  TORCH_CHECK(m >= 1, "quant_rows: at least one input row");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat &&
                    bias->dim() == 1 && bias->size(0) == out,
                "quant_rows: bias must be a float32 [", out, "] CPU tensor");
  }
  const at::Tensor xc = x.contiguous();
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  at::Tensor y = at::empty(sizes, x.options());
  const int64_t blocks = k / kQK;
  const bool has_mins = w.mins_f16 != nullptr;
  const ColumnsFn run_columns = int16_activations ? pick<kInt16Act>(format, has_mins)
                               : int8_activations ? pick<kInt8Act>(format, has_mins)
                                                  : pick<kFloatAct>(format, has_mins);
  // 4-bit blocks in GGUF order take int16 activations in pair order (AVX2's pairs_4bit16)
#if defined(__AVX2__)
  const bool paired = format == kQ4_0 || format == kQ4_1 || (format == kQ4 && group_size == kQK);
#else
  const bool paired = false;
#endif
  const int threads = at::get_num_threads();
  const int64_t rows = std::min(m, kMaxRows);
  std::vector<int8_t> qx(int8_activations ? rows * k : 0);
  std::vector<int16_t> qw(int16_activations ? rows * k : 0);
  std::vector<int32_t> sq(int16_activations ? rows * blocks : 0);
  std::vector<float> dx(activations != 0 ? rows * blocks : 0), sx(rows * blocks);
  // More than kMaxRows rows (a prompt): kMaxRows at a time, each pass reading the weights once.
  for (int64_t r0 = 0; r0 < m; r0 += kMaxRows) {
    const int64_t mr = std::min(kMaxRows, m - r0);
    Acts a{xc.data_ptr<float>() + r0 * k, nullptr, nullptr, nullptr, sx.data(), nullptr, k};
    if (int16_activations) {
      quantize_rows16(a.x, mr, k, paired, qw.data(), dx.data(), sx.data(), sq.data());
      a.qw = qw.data();
      a.dx = dx.data();
      a.sq = sq.data();
    } else if (int8_activations) {
      quantize_rows(a.x, mr, k, activations == 2, qx.data(), dx.data(), sx.data());
      a.qx = qx.data();
      a.dx = dx.data();
    } else {
      block_sums(a.x, mr, k, sx.data());
    }
    float* yp = y.data_ptr<float>() + r0 * out;
    if (threads == 1 || out * w.row_bytes < kSerialBytes) {
      run_columns(w, a, mr, yp, out, 0, out);
      continue;
    }
    const int64_t step = x8 ? 8 : 4;  // interleaved blocks: whole groups of eight rows
    const int64_t chunk = std::max<int64_t>(step, kChunkBytes / w.row_bytes / step * step);
    const int64_t n = (out + chunk - 1) / chunk;
    const int64_t T = std::min<int64_t>(threads, n);
    const auto run = [&](int64_t c) {
      run_columns(w, a, mr, yp, out, c * chunk, std::min(out, (c + 1) * chunk));
    };
    WorkShares shares(n, T);
    at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) { shares.run(begin, end, run); });
  }
  if (bias.has_value() && bias->defined()) y.add_(*bias);
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llm_kernels, lib) {
  lib.def(
      "quant_rows(Tensor x, Tensor qweight, Tensor? scales, Tensor? mins, int format, "
      "int group_size, Tensor? bias, int activations) -> Tensor");
}

TORCH_LIBRARY_IMPL(llm_kernels, CPU, lib) { lib.impl("quant_rows", &quant_rows); }

// decode_layers.cpp's view of the int8-activation arithmetic, for use inside its own parallel
// region: the activations of m rows of k quantized per block of 32 (qx [m, k], dx and sx
// [m, k/32]; also a contiguous run of blocks of one row), and output columns [begin, end) of
// GGUF blocks (format 0 Q8_0, 1 Q4_0, 2 Q4_1; rows of row_bytes) times them, y[r * ld_y + n].
void llm_kernels_quantize_blocks(const float* x, int64_t m, int64_t k, int8_t* qx, float* dx,
                                 float* sx) {
  quantize_rows(x, m, k, /*per_row=*/false, qx, dx, sx);
}
void llm_kernels_quant_columns(const uint8_t* q, int64_t row_bytes, int64_t format,
                               const int8_t* qx, const float* dx, const float* sx, int64_t k,
                               int64_t m, float* y, int64_t ld_y, int64_t begin, int64_t end) {
  const Weights w{q, row_bytes, nullptr, nullptr, nullptr, 0, 0};
  const Acts a{nullptr, qx, nullptr, dx, sx, nullptr, k};
  pick<kInt8Act>(format, /*has_mins=*/false)(w, a, m, y, ld_y, begin, end);
}
