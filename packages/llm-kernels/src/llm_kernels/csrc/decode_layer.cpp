// llm_kernels::decode_layer(x, attn_norm, mlp_norm, eps, qkv, qkv_formats, o, o_format,
//                           gate_up, gate_up_formats, down, down_format, k_cache, v_cache,
//                           slot, cos, sin, mask, n_head, n_kv_head, scale) -> x'
//
// One decode step of one Llama-style block (pre-norm RMSNorm, RoPE attention with grouped
// query heads over a static KV cache, SwiGLU MLP, no biases) for B rows of one token each:
//
//   h = rms_norm(x) ; q, k, v = h Wq, h Wk, h Wv ; rotate q, k ; cache[slot] = k, v
//   x = x + attend(q, cache[:slot + 1]) Wo ; h = rms_norm(x) ; x = x + (silu(h Wg) * h Wu) Wd
//
// in one call, so that a step pays the interpreter and dispatcher once per layer instead of
// some thirty times. The products are the library's own kernels (linear_rows for float32
// row-major weights, format -1; quant_rows with int8 activations for GGUF blocks, formats 0
// Q8_0, 1 Q4_0, 2 Q4_1) and attention is attend_rows under the caller's mask, so the
// arithmetic is theirs; the norms, the rotation (half-split layout) and the SwiGLU are written
// here in float32 as llm_kernels.reference writes them.
//
// Threads: the whole layer is one parallel region of torch's intra-op threads, its phases
// (q/k/v; per row and KV head RoPE, the cache write and attention; o; the residual and norm;
// gate/up with SwiGLU, a run of rows at a time; down and the residual) separated by a spinning
// barrier, each phase's units taken by whichever thread is free. A layer thus forks the team
// once instead of once per product and attention (eight times), and the small serial work
// (quantizing activations, SwiGLU) is spread over the threads or done where it is needed.
// Every output is computed by the same operations whatever thread takes it, so the result
// does not depend on the thread count.
//
// qkv: [Wq, Wk, Wv] or one fused [Wqkv] (rows q, then k, then v); gate_up: [Wg, Wu] or one
// fused [Wgu] (gate rows, then up rows). x: [B, 1, C] float32; caches: [B, H_kv, S, D]
// float32 contiguous, written at `slot`; cos, sin: [B, D/2]; mask: bool [B|1, 1, 1, slot + 1].

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

// The library's kernels, for use inside this op's parallel region (linear_rows.cpp,
// quant_rows.cpp, attend_rows.cpp).
void llm_kernels_linear_columns(const float* w, int64_t in, const float* x, int64_t m, float* y,
                                int64_t ld_y, int64_t begin, int64_t end);
void llm_kernels_quantize_blocks(const float* x, int64_t m, int64_t k, int8_t* qx, float* dx,
                                 float* sx);
void llm_kernels_quant_columns(const uint8_t* q, int64_t row_bytes, int64_t format,
                               const int8_t* qx, const float* dx, const float* sx, int64_t k,
                               int64_t m, float* y, int64_t ld_y, int64_t begin, int64_t end);
void llm_kernels_attend_check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& mask);
void llm_kernels_attend_units(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& mask, double scale, float* y, int64_t begin,
                              int64_t end);

namespace {

constexpr int64_t kFloat = -1;          // float32 row-major weights
constexpr int64_t kQK = 32;             // values per block of the int8 activations
constexpr int64_t kChunkBytes = 32768;  // weights per unit of work sharing

// B rows of K activations: float, and quantized per block of 32 when a quantized matrix
// multiplies them (llama.cpp's Q8_0 rounding, quant_rows' activations=1).
struct Acts {
  int64_t rows = 0, k = 0;
  std::vector<float> x;
  std::vector<int8_t> qx;
  std::vector<float> dx, sx;

  Acts(int64_t rows_, int64_t k_, bool quantized) : rows(rows_), k(k_), x(rows_ * k_) {
    if (quantized) qx.resize(rows * k), dx.resize(rows * k / kQK), sx.resize(rows * k / kQK);
  }
  bool quantized() const { return !qx.empty(); }
  // Quantize blocks [b0, b1) of row r from x.
  void quantize(int64_t r, int64_t b0, int64_t b1) {
    if (!quantized() || b1 <= b0) return;
    const int64_t blocks = k / kQK;
    llm_kernels_quantize_blocks(x.data() + r * k + b0 * kQK, 1, (b1 - b0) * kQK,
                                qx.data() + r * k + b0 * kQK, dx.data() + r * blocks + b0,
                                sx.data() + r * blocks + b0);
  }
  void quantize_all() {
    for (int64_t r = 0; r < rows; ++r) quantize(r, 0, k / kQK);
  }
};

// One weight matrix ([N, K]: float32 row-major, or GGUF blocks of `format`).
struct Matrix {
  const void* w = nullptr;
  int64_t format = kFloat, n = 0, row_bytes = 0;
};

// y[r * ld + j] = (a_r . w_j) for output rows j in [begin, end) of m.
void multiply(const Matrix& m, const Acts& a, float* y, int64_t ld, int64_t begin, int64_t end) {
  if (m.format == kFloat) {
    llm_kernels_linear_columns(static_cast<const float*>(m.w), a.k, a.x.data(), a.rows, y, ld,
                               begin, end);
  } else {
    llm_kernels_quant_columns(static_cast<const uint8_t*>(m.w), m.row_bytes, m.format,
                              a.qx.data(), a.dx.data(), a.sx.data(), a.k, a.rows, y, ld, begin,
                              end);
  }
}

Matrix matrix(const at::Tensor& w, int64_t format, int64_t k, const char* what) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.is_cpu(), "decode_layer: ", what,
              " must be a contiguous 2-D CPU tensor");
  if (format == kFloat) {
    TORCH_CHECK(w.scalar_type() == at::kFloat && w.size(1) == k, "decode_layer: float ", what,
                " must be float32 with ", k, " inputs, got ", w.sizes());
  } else {
    static constexpr int64_t kBlockBytes[] = {34, 18, 20};
    TORCH_CHECK(format >= 0 && format <= 2, "decode_layer: unknown weight format ", format);
    TORCH_CHECK(k % kQK == 0, "decode_layer: a quantized ", what, " needs inputs in blocks of 32, got ", k);
    TORCH_CHECK(w.scalar_type() == at::kByte && w.size(1) == k / kQK * kBlockBytes[format],
                "decode_layer: a quantized ", what, "'s rows hold ", w.size(1), " bytes, expected ",
                k / kQK * kBlockBytes[format]);
  }
  return {w.data_ptr(), format, w.size(0), w.size(1) * int64_t(w.element_size())};
}

// Rows of weights per unit of work, a multiple of `multiple`.
int64_t chunk_rows(const Matrix& m, int64_t multiple, int64_t matrices = 1) {
  const int64_t rows = kChunkBytes / std::max<int64_t>(1, m.row_bytes * matrices);
  return std::max(multiple, rows / multiple * multiple);
}

// One unit of a product phase: rows [begin, end) of a matrix into y (row stride ld).
struct Part {
  const Matrix* m;
  float* y;
  int64_t ld, begin, end;
};

// The parts of a group of matrices whose outputs sit side by side in y (row stride ld).
void add_parts(std::vector<Part>& parts, const std::vector<Matrix>& ms, float* y, int64_t ld) {
  int64_t offset = 0;
  for (const Matrix& m : ms) {
    const int64_t step = chunk_rows(m, 4);
    for (int64_t r = 0; r < m.n; r += step) parts.push_back({&m, y + offset, ld, r, std::min(m.n, r + step)});
    offset += m.n;
  }
}

// y = weight * x / sqrt(mean(x^2) + eps), row by row (RMSNorm in float32)
void rms_norm(const float* x, const float* weight, double eps, int64_t rows, int64_t c, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    float ss = 0.f;
    for (int64_t i = 0; i < c; ++i) ss += xr[i] * xr[i];
    const float inv = 1.f / std::sqrt(ss / float(c) + float(eps));
    for (int64_t i = 0; i < c; ++i) y[r * c + i] = weight[i] * (xr[i] * inv);
  }
}

// Rotate `heads` heads of D values at p by cos, sin [D/2] (half-split layout).
void rotate(float* p, int64_t heads, int64_t d, const float* cos, const float* sin) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* x = p + h * d;
    for (int64_t i = 0; i < half; ++i) {
      const float a = x[i], b = x[i + half];
      x[i] = a * cos[i] - b * sin[i];
      x[i + half] = b * cos[i] + a * sin[i];
    }
  }
}

// The threads of the op's parallel region wait here for each other between phases. A thread
// carrying several of the region's ids (a team smaller than asked for, or none: the region
// run inline) arrives for all of them at once, so the barrier cannot wait for a thread that
// does not exist. A waiting thread spins for a while (a phase's threads finish within
// microseconds of each other), then sleeps on a futex (std::atomic::wait): on a busy host the
// thread it waits for may be off its core for milliseconds, and a spinning thread would take
// that core's time from it.
class Barrier {
 public:
  explicit Barrier(int64_t parties) : parties_(parties) {}

  void arrive(int64_t ids) {
    const int32_t round = round_.load(std::memory_order_acquire);
    if (count_.fetch_add(ids, std::memory_order_acq_rel) + ids == parties_) {
      count_.store(0, std::memory_order_relaxed);
      round_.store(round + 1, std::memory_order_seq_cst);
      if (sleepers_.load(std::memory_order_seq_cst) > 0) round_.notify_all();
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    for (int64_t spins = 1;; ++spins) {
      if (round_.load(std::memory_order_acquire) != round) return;
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
      if (spins % 64 == 0 && std::chrono::steady_clock::now() - start > kSpin) break;
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (round_.load(std::memory_order_seq_cst) == round) round_.wait(round);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  static constexpr std::chrono::microseconds kSpin{50};
  alignas(64) std::atomic<int64_t> count_{0};
  alignas(64) std::atomic<int32_t> round_{0};
  alignas(64) std::atomic<int32_t> sleepers_{0};
  int64_t parties_;
};

// Units [0, n) of a phase, taken by whichever thread is free.
struct alignas(64) Counter {
  std::atomic<int64_t> next{0};
  template <typename F>
  void run(int64_t n, F&& f) {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) f(i);
  }
};

at::Tensor decode_layer(const at::Tensor& x, const at::Tensor& attn_norm,
                        const at::Tensor& mlp_norm, double eps, at::TensorList qkv,
                        at::IntArrayRef qkv_formats, const at::Tensor& o, int64_t o_format,
                        at::TensorList gate_up, at::IntArrayRef gate_up_formats,
                        const at::Tensor& down, int64_t down_format, const at::Tensor& k_cache,
                        const at::Tensor& v_cache, int64_t slot, const at::Tensor& cos,
                        const at::Tensor& sin, const at::Tensor& mask, int64_t n_head,
                        int64_t n_kv_head, double scale) {
  TORCH_CHECK(x.dim() == 3 && x.size(1) == 1 && x.scalar_type() == at::kFloat && x.is_cpu(),
              "decode_layer: x must be float32 [B, 1, C] on CPU, got ", x.sizes());
  const int64_t B = x.size(0), C = x.size(2);
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes() &&
                  k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.scalar_type() == at::kFloat && v_cache.scalar_type() == at::kFloat,
              "decode_layer: caches must be contiguous float32 [B, H_kv, S, D]");
  const int64_t S = k_cache.size(2), D = k_cache.size(3);
  TORCH_CHECK(k_cache.size(0) == B && k_cache.size(1) == n_kv_head && n_kv_head > 0 &&
                  n_head % n_kv_head == 0 && D % 2 == 0,
              "decode_layer: cache ", k_cache.sizes(), " does not fit ", B, " rows of ",
              n_kv_head, " KV heads");
  TORCH_CHECK(slot >= 0 && slot < S, "decode_layer: slot ", slot, " outside a cache of ", S);
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.numel() == B * D / 2 &&
                  sin.numel() == B * D / 2 && cos.scalar_type() == at::kFloat &&
                  sin.scalar_type() == at::kFloat,
              "decode_layer: cos and sin must be float32 [B, D/2]");
  TORCH_CHECK(attn_norm.numel() == C && mlp_norm.numel() == C &&
                  attn_norm.scalar_type() == at::kFloat && mlp_norm.scalar_type() == at::kFloat &&
                  attn_norm.is_contiguous() && mlp_norm.is_contiguous(),
              "decode_layer: norm weights must be float32 [C]");
  const int64_t H = n_head, Hkv = n_kv_head, G = H / Hkv;
  const int64_t qd = H * D, kvd = Hkv * D;

  // the weights
  TORCH_CHECK(qkv.size() == qkv_formats.size() && gate_up.size() == gate_up_formats.size(),
              "decode_layer: ", qkv.size(), " + ", gate_up.size(), " weights but ",
              qkv_formats.size(), " + ", gate_up_formats.size(), " formats");
  TORCH_CHECK(qkv.size() == 1 || qkv.size() == 3, "decode_layer: qkv needs 1 or 3 weights, got ", qkv.size());
  TORCH_CHECK(gate_up.size() == 1 || gate_up.size() == 2,
              "decode_layer: gate_up needs 1 or 2 weights, got ", gate_up.size());
  std::vector<Matrix> qkv_m, gu_m;
  for (size_t i = 0; i < qkv.size(); ++i) qkv_m.push_back(matrix(qkv[i], qkv_formats[i], C, "qkv weight"));
  if (qkv_m.size() == 1) {
    TORCH_CHECK(qkv_m[0].n == qd + 2 * kvd, "decode_layer: fused qkv has ", qkv_m[0].n,
                " outputs, expected ", qd + 2 * kvd);
  } else {
    const int64_t widths[] = {qd, kvd, kvd};
    for (int i = 0; i < 3; ++i)
      TORCH_CHECK(qkv_m[i].n == widths[i], "decode_layer: qkv part ", i, " has ", qkv_m[i].n,
                  " outputs, expected ", widths[i]);
  }
  const Matrix o_m = matrix(o, o_format, qd, "o");
  TORCH_CHECK(o_m.n == C, "decode_layer: o has ", o_m.n, " outputs, expected ", C);
  for (size_t i = 0; i < gate_up.size(); ++i)
    gu_m.push_back(matrix(gate_up[i], gate_up_formats[i], C, "gate_up weight"));
  const int64_t f = gu_m.size() == 1 ? gu_m[0].n / 2 : gu_m[0].n;
  TORCH_CHECK(f > 0 && (gu_m.size() == 1 ? gu_m[0].n == 2 * f : gu_m[1].n == f),
              "decode_layer: gate and up have different widths");
  const Matrix down_m = matrix(down, down_format, f, "down");
  TORCH_CHECK(down_m.n == C, "decode_layer: down has ", down_m.n, " outputs, expected ", C);
  const auto any_quantized = [](const std::vector<Matrix>& ms) {
    return std::any_of(ms.begin(), ms.end(), [](const Matrix& m) { return m.format != kFloat; });
  };

  // buffers, all allocated before the parallel region (nothing in it allocates tensors or throws)
  at::Tensor q = at::empty({B, H, 1, D}, x.options());
  const at::Tensor keys = k_cache.narrow(2, 0, slot + 1);
  const at::Tensor values = v_cache.narrow(2, 0, slot + 1);
  llm_kernels_attend_check(q, keys, values, mask);
  const int64_t qkv_ld = qd + 2 * kvd;
  std::vector<float> qkv_out(B * qkv_ld), attn(B * C), gu(B * 2 * f), mlp(B * C);
  Acts h(B, C, any_quantized(qkv_m)), y(B, qd, o_m.format != kFloat);
  Acts h2(B, C, any_quantized(gu_m)), act(B, f, down_m.format != kFloat);
  at::Tensor out = at::empty({B, 1, C}, x.options());
  const at::Tensor x2 = x.reshape({B, C}).contiguous();
  const float* xp = x2.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* qp = q.data_ptr<float>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();

  // the units of work of each phase
  std::vector<Part> qkv_parts, o_parts, down_parts;
  add_parts(qkv_parts, qkv_m, qkv_out.data(), qkv_ld);
  const std::vector<Matrix> o_group{o_m}, down_group{down_m};  // (parts point into these)
  add_parts(o_parts, o_group, attn.data(), C);
  add_parts(down_parts, down_group, mlp.data(), C);
  // gate and up together, in runs of whole blocks of 32 of the activation
  const int64_t gu_step = std::min(f, chunk_rows(gu_m[0], kQK, 2));
  const int64_t gu_units = (f + gu_step - 1) / gu_step;
  // a unit of attention can quantize its own heads' outputs when they are whole blocks
  const bool y_by_unit = (G * D) % kQK == 0;

  rms_norm(xp, attn_norm.data_ptr<float>(), eps, B, C, h.x.data());
  h.quantize_all();

  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), 64));
  Barrier barrier(T);
  Counter counters[6];
  const float* mlp_norm_p = mlp_norm.data_ptr<float>();

  const auto body = [&](int64_t id_begin, int64_t id_end) {
    const int64_t ids = id_end - id_begin;
    const bool first = id_begin == 0;
    // q, k, v
    counters[0].run(qkv_parts.size(), [&](int64_t i) {
      const Part& p = qkv_parts[i];
      multiply(*p.m, h, p.y, p.ld, p.begin, p.end);
    });
    barrier.arrive(ids);
    // per (row, KV head): RoPE, the cache write, attention over the cache
    counters[1].run(B * Hkv, [&](int64_t u) {
      const int64_t b = u / Hkv, hk = u % Hkv;
      const float* row = qkv_out.data() + b * qkv_ld;
      const float* cb = cp + b * D / 2;
      const float* sb = sp + b * D / 2;
      float* qb = qp + (b * H + hk * G) * D;
      std::copy(row + hk * G * D, row + (hk + 1) * G * D, qb);
      rotate(qb, G, D, cb, sb);
      float* kdst = kc + ((b * Hkv + hk) * S + slot) * D;
      float* vdst = vc + ((b * Hkv + hk) * S + slot) * D;
      std::copy(row + qd + hk * D, row + qd + (hk + 1) * D, kdst);
      std::copy(row + qd + kvd + hk * D, row + qd + kvd + (hk + 1) * D, vdst);
      rotate(kdst, 1, D, cb, sb);
      llm_kernels_attend_units(q, keys, values, mask, scale, y.x.data(), u, u + 1);
      if (y_by_unit) y.quantize(b, hk * G * D / kQK, (hk + 1) * G * D / kQK);
    });
    barrier.arrive(ids);
    if (!y_by_unit && y.quantized()) {
      if (first) y.quantize_all();
      barrier.arrive(ids);
    }
    // o
    counters[2].run(o_parts.size(), [&](int64_t i) {
      const Part& p = o_parts[i];
      multiply(*p.m, y, p.y, p.ld, p.begin, p.end);
    });
    barrier.arrive(ids);
    // the residual, the MLP's norm
    if (first) {
      for (int64_t i = 0; i < B * C; ++i) op[i] = xp[i] + attn[i];
      rms_norm(op, mlp_norm_p, eps, B, C, h2.x.data());
      h2.quantize_all();
    }
    barrier.arrive(ids);
    // gate and up, SwiGLU, the activation's quantization, a run of rows at a time
    counters[3].run(gu_units, [&](int64_t i) {
      const int64_t a = i * gu_step, e = std::min(f, a + gu_step);
      if (gu_m.size() == 1) {
        multiply(gu_m[0], h2, gu.data(), 2 * f, a, e);
        multiply(gu_m[0], h2, gu.data(), 2 * f, f + a, f + e);
      } else {
        multiply(gu_m[0], h2, gu.data(), 2 * f, a, e);
        multiply(gu_m[1], h2, gu.data() + f, 2 * f, a, e);
      }
      for (int64_t b = 0; b < B; ++b) {
        const float* gs = gu.data() + b * 2 * f;
        const float* us = gs + f;
        float* ab = act.x.data() + b * f;
        for (int64_t j = a; j < e; ++j) {
          const float gv = gs[j];
          ab[j] = gv / (1.f + std::exp(-gv)) * us[j];
        }
        act.quantize(b, a / kQK, e / kQK);  // a quantized down has f % 32 == 0
      }
    });
    barrier.arrive(ids);
    // down and the residual
    counters[4].run(down_parts.size(), [&](int64_t i) {
      const Part& p = down_parts[i];
      multiply(*p.m, act, p.y, p.ld, p.begin, p.end);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = p.begin; j < p.end; ++j) op[b * C + j] += mlp[b * C + j];
    });
  };
  if (T == 1) {
    body(0, 1);
  } else {
    at::parallel_for(0, T, 1, body);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llm_kernels, lib) {
  lib.def(
      "decode_layer(Tensor x, Tensor attn_norm, Tensor mlp_norm, float eps, Tensor[] qkv, "
      "int[] qkv_formats, Tensor o, int o_format, Tensor[] gate_up, int[] gate_up_formats, "
      "Tensor down, int down_format, Tensor(a!) k_cache, Tensor(b!) v_cache, int slot, "
      "Tensor cos, Tensor sin, Tensor mask, int n_head, int n_kv_head, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(llm_kernels, CPU, lib) { lib.impl("decode_layer", &decode_layer); }
