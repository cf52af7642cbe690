// Sixteen floats as one value (GCC's vector extension: one AVX-512 register, or split as the
// target allows) for attend_rows.cpp and linear_rows.cpp: unaligned loads and stores, and the
// sum of the lanes as a tree (halves, then quarters, ...): four shuffles and adds instead of
// fifteen dependent scalar adds. Every kernel that ends a sum this way gets the same bits
// for it whatever tile computed the lanes.

#pragma once

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

}  // namespace
