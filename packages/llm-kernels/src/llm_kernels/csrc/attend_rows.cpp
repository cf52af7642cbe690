// llm_kernels::attend_rows(q, k, v, mask, scale) -> y: attention for a few queries per row.
//
// Decode asks, in every layer, for one query per stream against the keys and values held in
// the cache. This kernel computes it for float32 on CPU reading each cached row once per
// (row, KV head, query): it scores every key for the group of query heads that share it
// (four keys at a time), takes a softmax with a vectorised exp, then sums the value rows with
// each head's output held in registers. (row, KV head, query) units are split between torch's
// intra-op threads.
//
// q: [B, H, T, D]; k, v: [B, H_kv, S, D] with H a multiple of H_kv (grouped-query attention),
// any strides with unit stride along D (a cache's slice needs no copy); mask: bool
// [B or 1, 1, T, S], true where the query may see the key (llm_kernels.attention_mask).
// y: [B, H, T, D]; a query that sees no key gets zeros, as llm_kernels.reference.attention.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "vec16.h"

namespace {

constexpr int64_t kLanes = 16;

inline float dot(const float* a, const float* b, int64_t n) {
  vec16 acc{};
  const int64_t body = n - n % kLanes;
  for (int64_t i = 0; i < body; i += kLanes) acc += load(a + i) * load(b + i);
  float s = hsum(acc);
  for (int64_t i = body; i < n; ++i) s += a[i] * b[i];
  return s;
}

// x[j] = dot(q, k[j], n) for j < 4: four independent sums.
inline void dot4(const float* q, const float* const (&k)[4], int64_t n, float* x) {
  vec16 a0{}, a1{}, a2{}, a3{};
  const int64_t body = n - n % kLanes;
  for (int64_t i = 0; i < body; i += kLanes) {
    const vec16 qv = load(q + i);
    a0 += qv * load(k[0] + i);
    a1 += qv * load(k[1] + i);
    a2 += qv * load(k[2] + i);
    a3 += qv * load(k[3] + i);
  }
  hsum4(a0, a1, a2, a3, x);
  for (int64_t i = body; i < n; ++i) {
    for (int j = 0; j < 4; ++j) x[j] += q[i] * k[j][i];
  }
}

// Keys and values this far ahead of the four keys being scored are fetched in advance, into
// L2 (prefetcht1), and a unit's first ones before it starts: a cache's rows come from memory
// in runs of a block (paged) or a row's keys, too short for the hardware prefetchers alone.
// Fetched into L1 instead (prefetcht0), the prefetches stalled on the L1's few miss buffers:
// the attention phase of an 8-stream engine step, llama-125m shape, Zen 4 VM (2026-12-03),
// took 1.10-1.13 ms this way against 1.53-1.56 (docs/benchmarks.md, "attention's reads").
constexpr int64_t kAhead = 16;
inline void prefetch_row(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(p + i, 0, 2);
}

// Where the key (and value) rows of one (row, KV head) are: row s at base + index(s) * ld, with
// index(s) = s (a [.., S, D] tensor: a static cache's slice) or slots[s] (a paged cache's pool,
// its rows in the order of the row's block table).
struct KeyRows {
  const float* base;
  int64_t ld;
  const int64_t* slots;  // null: rows in order
  const float* operator()(int64_t s) const { return base + (slots ? slots[s] : s) * ld; }
};

// out[:n] = sum_s p[s] * v(s)[:n] (out is overwritten).
inline void weigh_rows(const float* p, const KeyRows& v, int64_t rows, int64_t n, float* out) {
  constexpr int64_t kChunk = 8;  // vectors held in registers
  const int64_t body = n - n % kLanes;
  for (int64_t c = 0; c < body; c += kChunk * kLanes) {
    const int64_t nv = std::min<int64_t>(kChunk, (body - c) / kLanes);
    vec16 acc[kChunk] = {};
    for (int64_t s = 0; s < rows; ++s) {
      if (p[s] == 0.f) continue;
      const vec16 pv = vec16{} + p[s];
      const float* vr = v(s) + c;
      for (int64_t j = 0; j < nv; ++j) acc[j] += pv * load(vr + j * kLanes);
    }
    for (int64_t j = 0; j < nv; ++j) store(out + c + j * kLanes, acc[j]);
  }
  for (int64_t i = body; i < n; ++i) {
    float a = 0.f;
    for (int64_t s = 0; s < rows; ++s) a += p[s] * v(s)[i];
    out[i] = a;
  }
}

// p[s] = exp(p[s] - mx) for s < n; returns their sum.
inline float exp_shift_sum(float* p, int64_t n, float mx) {
  vec16 acc{};
  const vec16 m = vec16{} + mx;
  const int64_t body = n - n % kLanes;
  for (int64_t s = 0; s < body; s += kLanes) {
    const vec16 e = exp_nonpositive(load(p + s) - m);
    store(p + s, e);
    acc += e;
  }
  float sum = hsum(acc);
  for (int64_t s = body; s < n; ++s) {
    vec16 x{};
    x[0] = p[s] - mx;
    p[s] = exp_nonpositive(x)[0];
    sum += p[s];
  }
  return sum;
}

// Checks q, k, v and mask as attend_rows takes them (y: [B, H, T, D]).
void check_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& mask) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attend_rows: q, k, v must be 4-D");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu() && mask.device().is_cpu(),
              "attend_rows: CPU tensors only");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "attend_rows: float32 q, k, v only");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 4, "attend_rows: mask must be a 4-D bool tensor");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == B && k.size(3) == D && Hkv > 0 && H % Hkv == 0,
              "attend_rows: q ", q.sizes(), " and k/v ", k.sizes(), " disagree");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "attend_rows: q, k and v need unit stride along head_dim");
  TORCH_CHECK((mask.size(0) == 1 || mask.size(0) == B) && mask.size(1) == 1 && mask.size(2) == T &&
                  mask.size(3) == S,
              "attend_rows: mask ", mask.sizes(), " does not fit [B|1, 1, ", T, ", ", S, "]");
}

// The units [begin, end) of (row, KV head, query), u = (b * H_kv + hk) * T + t, into y
// (contiguous [B, H, T, D]); arguments checked by check_args. With `slots` ([B, S] int64), k
// and v are a paged cache's pools seen as [1, H_kv, P, D] and row b's key s is pool row
// slots[b * S + s] (S: the mask's last size). Allocates only its scratch.
void attend_units(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& mask, double scale, float* yp, int64_t begin, int64_t end,
                  const int64_t* slots = nullptr) {
  const int64_t H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = slots ? mask.size(3) : k.size(2);
  const int64_t G = H / Hkv;
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const bool* mp = mask.data_ptr<bool>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), qs2 = q.stride(2);
  const int64_t ks0 = slots ? 0 : k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = slots ? 0 : v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  const int64_t ms0 = mask.size(0) == 1 ? 0 : mask.stride(0), ms2 = mask.stride(2), ms3 = mask.stride(3);
  const float sc = static_cast<float>(scale);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  std::vector<float> scores(G * S);
  std::vector<float> maxes(G);
  std::vector<const float*> qs(G);
  for (int64_t u = begin; u < end; ++u) {
    const int64_t t = u % T, hk = (u / T) % Hkv, b = u / (T * Hkv);
    const int64_t* row_slots = slots ? slots + b * S : nullptr;
    const KeyRows kr{kp + b * ks0 + hk * ks1, ks2, row_slots};
    const KeyRows vr{vp + b * vs0 + hk * vs1, vs2, row_slots};
    const bool* mrow = mp + b * ms0 + t * ms2;
    for (int64_t g = 0; g < G; ++g) {
      qs[g] = qp + b * qs0 + (hk * G + g) * qs1 + t * qs2;
      maxes[g] = kNegInf;
    }
    for (int64_t j = 0; j < std::min(S, kAhead); ++j) {
      prefetch_row(kr(j), D);
      prefetch_row(vr(j), D);
    }
    // scores: four keys at a time (independent sums), each key read once for the group
    int64_t s = 0;
    for (; s + 4 <= S; s += 4) {
      const float* const k4[4] = {kr(s), kr(s + 1), kr(s + 2), kr(s + 3)};
      for (int64_t j = s + kAhead; j < std::min(S, s + kAhead + 4); ++j) {
        prefetch_row(kr(j), D);
        prefetch_row(vr(j), D);
      }
      for (int64_t g = 0; g < G; ++g) {
        float x[4];
        dot4(qs[g], k4, D, x);
        for (int j = 0; j < 4; ++j) {
          x[j] = mrow[(s + j) * ms3] ? x[j] * sc : kNegInf;
          scores[g * S + s + j] = x[j];
          maxes[g] = std::max(maxes[g], x[j]);
        }
      }
    }
    for (; s < S; ++s) {
      const bool seen = mrow[s * ms3];
      for (int64_t g = 0; g < G; ++g) {
        const float x = seen ? dot(qs[g], kr(s), D) * sc : kNegInf;
        scores[g * S + s] = x;
        maxes[g] = std::max(maxes[g], x);
      }
    }
    float* outs = yp + ((b * H + hk * G) * T + t) * D;  // head g at outs + g * T * D
    for (int64_t g = 0; g < G; ++g) {
      float* sg = scores.data() + g * S;
      if (maxes[g] == kNegInf) {  // sees no key: zeros, as the reference
        std::fill(sg, sg + S, 0.f);
        continue;
      }
      const float inv = 1.f / exp_shift_sum(sg, S, maxes[g]);
      for (int64_t s = 0; s < S; ++s) sg[s] *= inv;
    }
    // values: each head's output in registers, 128 columns at a time
    for (int64_t g = 0; g < G; ++g) weigh_rows(scores.data() + g * S, vr, S, D, outs + g * T * D);
  }
}

at::Tensor attend_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& mask, double scale) {
  check_args(q, k, v, mask);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2);
  const int64_t G = H / Hkv;
  at::Tensor y = at::empty({B, H, T, D}, q.options());
  float* yp = y.data_ptr<float>();
  const int64_t units = B * Hkv * T;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, G * S * D));
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    attend_units(q, k, v, mask, scale, yp, begin, end);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llm_kernels, lib) {
  lib.def("attend_rows(Tensor q, Tensor k, Tensor v, Tensor mask, float scale) -> Tensor");
}
TORCH_LIBRARY_IMPL(llm_kernels, CPU, lib) { lib.impl("attend_rows", &attend_rows); }

// decode_layers.cpp's view: the arguments' checks, and the units [begin, end) of the loop above
// into a preallocated contiguous y (called from inside its own parallel region).
void llm_kernels_attend_check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& mask) {
  check_args(q, k, v, mask);
}
void llm_kernels_attend_units(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& mask, double scale, float* y, int64_t begin,
                              int64_t end) {
  attend_units(q, k, v, mask, scale, y, begin, end);
}
// The same over a paged cache's pools k, v ([1, H_kv, P, D] views, unit stride along D) for
// queries q [B, H, 1, D]: row b's keys are pool rows slots[b * S + s], s < S (mask: bool
// [B|1, 1, 1, S]); the caller checks the slots against P.
void llm_kernels_attend_units_paged(const at::Tensor& q, const at::Tensor& k,
                                    const at::Tensor& v, const at::Tensor& mask, double scale,
                                    const int64_t* slots, float* y, int64_t begin, int64_t end) {
  attend_units(q, k, v, mask, scale, y, begin, end, slots);
}
