// Sixteen floats as one value (GCC's vector extension: one AVX-512 register, or split as the
// target allows) for attend_rows.cpp, linear_rows.cpp and decode_layers.cpp: unaligned loads
// and stores; the sum of the lanes as a tree (halves, then quarters, ...): four shuffles and
// adds instead of fifteen dependent scalar adds (every kernel that ends a sum this way gets
// the same bits for it whatever tile computed the lanes); exp and silu.

#pragma once

#include <cstdint>

namespace {

typedef float vec16 __attribute__((vector_size(64)));
typedef float vec16u __attribute__((vector_size(64), aligned(4)));  // for unaligned access

inline vec16 load(const float* p) { return *reinterpret_cast<const vec16u*>(p); }
inline void store(float* p, vec16 v) { *reinterpret_cast<vec16u*>(p) = v; }

inline float hsum(vec16 v) {
  typedef float vec8 __attribute__((vector_size(32)));
  typedef float vec4 __attribute__((vector_size(16)));
  const vec8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const vec4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// exp(x) for x <= 0 (attention: a score minus the row's maximum; SwiGLU: -|x|), 0 below
// -87.3 (where float32's exp leaves the normal range) and for -inf: Cephes' expf, range
// reduction to |r| <= ln2/2 and a degree-6 polynomial, within 2 ulp of std::exp in the normal
// range.
typedef int32_t veci16 __attribute__((vector_size(64)));
inline vec16 exp_nonpositive(vec16 x) {
  const vec16 lo = vec16{} - 87.3f;
  const veci16 dead = x < lo;
  x = dead ? lo : x;
  const vec16 magic = vec16{} + 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  const vec16 n = (x * 1.44269504088896341f + magic) - magic;
  const vec16 r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  vec16 p = vec16{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vec16 y = p * r * r + r + 1.f;
  const veci16 bits = (__builtin_convertvector(n, veci16) + 127) << 23;
  vec16 scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  const vec16 out = y * scale;
  return dead ? vec16{} : out;
}

// silu(x) = x * sigmoid(x) from exp(-|x|) (never overflows): x / (1 + e) for x >= 0, and
// x * e / (1 + e) below.
inline vec16 silu(vec16 x) {
  const veci16 neg = x < 0.f;
  const vec16 e = exp_nonpositive(neg ? x : -x);
  return x * ((neg ? e : vec16{} + 1.f) / (e + 1.f));
}

}  // namespace
