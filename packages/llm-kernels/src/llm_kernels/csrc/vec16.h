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

// hsum of four vectors at once, the same tree for each (and so the same bits as hsum): halves
// of two vectors added in one vector, then quarters of four, then the pairs; eight shuffles and
// five vector adds for the four sums.
inline void hsum4(vec16 v0, vec16 v1, vec16 v2, vec16 v3, float* out) {
  // a(v) = v[0:8] + v[8:16]: a(v0), a(v1) side by side, a(v2), a(v3)
  const vec16 w01 = __builtin_shufflevector(v0, v1, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20,
                                            21, 22, 23) +
                    __builtin_shufflevector(v0, v1, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27,
                                            28, 29, 30, 31);
  const vec16 w23 = __builtin_shufflevector(v2, v3, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20,
                                            21, 22, 23) +
                    __builtin_shufflevector(v2, v3, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27,
                                            28, 29, 30, 31);
  // b(v) = a[0:4] + a[4:8]: b(v0) .. b(v3) in lanes 0-3, 4-7, 8-11, 12-15
  const vec16 z = __builtin_shufflevector(w01, w23, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24,
                                          25, 26, 27) +
                  __builtin_shufflevector(w01, w23, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23,
                                          28, 29, 30, 31);
  // (b0 + b2) and (b1 + b3) in each group's first two lanes, then their sum in its first
  const vec16 t = z + __builtin_shufflevector(z, z, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15,
                                              12, 13);
  const vec16 r = t + __builtin_shufflevector(t, t, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12,
                                              15, 14);
  out[0] = r[0], out[1] = r[4], out[2] = r[8], out[3] = r[12];
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
