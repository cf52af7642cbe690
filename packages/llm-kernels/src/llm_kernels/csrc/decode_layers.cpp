// llm_kernels::decode_layers(x, attn_norms, mlp_norms, eps, qkv, qkv_formats, o, o_formats,
//                            gate_up, gate_up_formats, down, down_formats, k_caches, v_caches,
//                            slot, cos, sin, mask, n_head, n_kv_head, scale, slots=None,
//                            write=None, norm=None, head=None, head_format=-1) -> x' | logits
//
// One decode step through L Llama-style blocks (pre-norm RMSNorm, RoPE attention with grouped
// query heads over a static or paged KV cache, SwiGLU MLP, no biases) for B rows of one token
// each:
//
//   h = rms_norm(x) ; q, k, v = h Wq, h Wk, h Wv ; rotate q, k ; cache[slot] = k, v
//   x = x + attend(q, cache[:slot + 1]) Wo ; h = rms_norm(x) ; x = x + (silu(h Wg) * h Wu) Wd
//
// in one call, so that a step pays the interpreter and dispatcher once instead of some thirty
// times a layer. Given the final norm's weight and the LM head (float32 row-major, format -1),
// the same call ends with logits = rms_norm(x) Whead^T, [B, V], instead of returning x':
// decode streams every weight from memory each token, which evicts the interpreter's and the
// dispatcher's code and data from the caches, and each torch op after such a stream pays for
// refetching them (some 100-250 us for a 768-wide norm after the head, against 14 us warm).
// The products are the library's own kernels (linear_rows' for float32 row-major weights,
// format -1; quant_rows' with int8 activations for GGUF blocks, formats 0 Q8_0, 1 Q4_0,
// 2 Q4_1) and attention is attend_rows' under the caller's mask, so the arithmetic is theirs;
// the norms, the rotation (half-split layout) and the SwiGLU are written here in float32 as
// llm_kernels.reference writes them, the SwiGLU's exp vectorised as attention's softmax's
// (vec16.h: within 2 ulp of std::exp; with std::exp the gate/up phase of eight rows of the
// llama-125m shape took 0.3-0.7 ms a step longer on a Zen 4 VM).
//
// Per layer l (lists hold the layers in order): attn_norms[l], mlp_norms[l]; qkv: [Wq, Wk, Wv]
// or one fused [Wqkv] (rows q, then k, then v) per layer, the same count for every layer;
// gate_up: [Wg, Wu] or one fused [Wgu] (gate rows, then up rows) per layer; o[l], down[l];
// a format code for each weight. x: [B, 1, C] float32 (not modified); cos, sin: [B, D/2].
// Static caches: [B, H_kv, S, D] float32 contiguous, written at `slot`; mask: bool
// [B|1, 1, 1, slot + 1]. Paged caches (llm_infer's block pool; `slots` given): each layer's
// pool [H_kv, P, D] float32 contiguous; slots: int64 [B, S], row b's keys in order (pool rows);
// write: int64 [B], the pool row of each row's new key and value; mask: bool [B|1, 1, 1, S];
// `slot` unused. norm: float32 [C]; head: [V, C] with its format code (as the other weights).
//
// Threads: the whole step is one parallel region of torch.get_num_threads() threads (the
// library's own team, team.cpp; torch's OpenMP threads when another thread's step holds it),
// its phases (per layer: the norm; q/k/v; per row and KV head RoPE, the cache write and
// attention; o; the residual and norm; gate/up with SwiGLU, a run of rows at a time; down and
// the residual; then the final norm and the head's rows) separated by a barrier; each thread
// owns a contiguous share of a phase's units and, done with it, takes units from the back of
// the others' shares (work_share.h). A step thus forks the team once instead of once per
// product and attention (eight times a layer), and the small serial work (quantizing
// activations, SwiGLU) is spread over the threads or done where it is needed. Every output
// is computed by the same operations whatever thread takes it, so the result does not depend
// on the thread count.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "spin_wait.h"
#include "vec16.h"
#include "work_share.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

// The library's kernels, for use inside this op's parallel region (linear_rows.cpp,
// quant_rows.cpp, attend_rows.cpp).
void llm_kernels_linear_columns(const float* w, int64_t in, const float* x, int64_t m, float* y,
                                int64_t ld_y, int64_t begin, int64_t end);
int64_t llm_kernels_linear_rows_together(int64_t m);
void llm_kernels_quantize_blocks(const float* x, int64_t m, int64_t k, int8_t* qx, float* dx,
                                 float* sx);
void llm_kernels_quant_columns(const uint8_t* q, int64_t row_bytes, int64_t format,
                               const int8_t* qx, const float* dx, const float* sx, int64_t k,
                               int64_t m, float* y, int64_t ld_y, int64_t begin, int64_t end);
// team.cpp: body(id) for id in [0, T) on the library's own threads; false if they are busy.
bool llm_kernels_team_run(int64_t T, const std::function<void(int64_t)>& body);
void llm_kernels_attend_check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& mask);
void llm_kernels_attend_units(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& mask, double scale, float* y, int64_t begin,
                              int64_t end);
void llm_kernels_attend_units_paged(const at::Tensor& q, const at::Tensor& k,
                                    const at::Tensor& v, const at::Tensor& mask, double scale,
                                    const int64_t* slots, float* y, int64_t begin, int64_t end);

namespace {

constexpr int64_t kFloat = -1;          // float32 row-major weights
constexpr int64_t kQK = 32;             // values per block of the int8 activations
constexpr int64_t kChunkBytes = 131072;  // weights per unit of work sharing
constexpr const char* kOp = "decode_layers: ";

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
  // rows a unit of work starts at a multiple of, for `inputs` rows of activations:
  // interleaved blocks come in groups of 8, float32 rows in linear_rows' whole tiles, other
  // formats in fours
  int64_t rows_together(int64_t inputs) const {
    return format >= 5 ? 8 : format == kFloat ? llm_kernels_linear_rows_together(inputs) : 4;
  }
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
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.is_cpu(), kOp, what,
              " must be a contiguous 2-D CPU tensor");
  if (format == kFloat) {
    TORCH_CHECK(w.scalar_type() == at::kFloat && w.size(1) == k, kOp, "float ", what,
                " must be float32 with ", k, " inputs, got ", w.sizes());
  } else {
    // quant_rows' codes: 0 Q8_0, 1 Q4_0, 2 Q4_1; 5, 6 the same 4-bit blocks, eight rows
    // interleaved (llm_kernels.reference.interleave8)
    static constexpr int64_t kBlockBytes[] = {34, 18, 20, 0, 0, 18, 20};
    TORCH_CHECK(format >= 0 && format <= 6 && kBlockBytes[format] > 0, kOp,
                "unknown weight format ", format);
    TORCH_CHECK(format < 5 || w.size(0) % 8 == 0, kOp, "interleaved ", what,
                " needs rows in groups of 8, got ", w.size(0));
    TORCH_CHECK(k % kQK == 0, kOp, "a quantized ", what, " needs inputs in blocks of 32, got ", k);
    TORCH_CHECK(w.scalar_type() == at::kByte && w.size(1) == k / kQK * kBlockBytes[format],
                kOp, "a quantized ", what, "'s rows hold ", w.size(1), " bytes, expected ",
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
void add_parts(std::vector<Part>& parts, const std::vector<Matrix>& ms, float* y, int64_t ld,
               int64_t inputs) {
  int64_t offset = 0;
  for (const Matrix& m : ms) {
    const int64_t step = chunk_rows(m, m.rows_together(inputs));
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

// out[j] = silu(g[j]) * u[j] for j < n, sixteen at a time (the last few as a vector too: a
// value's result does not depend on where a run of them starts or ends)
void swiglu(const float* g, const float* u, float* out, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) store(out + j, silu(load(g + j)) * load(u + j));
  if (j == n) return;
  vec16 gv{}, uv{};
  for (int64_t i = j; i < n; ++i) gv[i - j] = g[i], uv[i - j] = u[i];
  const vec16 r = silu(gv) * uv;
  for (int64_t i = j; i < n; ++i) out[i] = r[i - j];
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
    wait_while(round_, round, kSpin, sleepers_);
  }

 private:
  static constexpr std::chrono::microseconds kSpin{50};
  alignas(64) std::atomic<int64_t> count_{0};
  alignas(64) std::atomic<int32_t> round_{0};
  alignas(64) std::atomic<int32_t> sleepers_{0};
  int64_t parties_;
};

// The working buffers of a layer: one set serves every layer of the same width and formats
// (the layers run one after the other), so that a step's buffers stay a layer's size instead of
// the model's (eight rows of the llama-125m shape: 0.36 MB instead of 4.3 MB to allocate and
// zero each step).
struct Scratch {
  std::vector<float> qkv_out, attn, gu, mlp;
  Acts h, y, h2, act;

  Scratch(int64_t B, int64_t C, int64_t qd, int64_t qkv_ld, int64_t f, bool qkv_q, bool o_q,
          bool gu_q, bool down_q)
      : qkv_out(B * qkv_ld), attn(B * C), gu(B * 2 * f), mlp(B * C), h(B, C, qkv_q),
        y(B, qd, o_q), h2(B, C, gu_q), act(B, f, down_q) {}
  // whether a layer of width f whose products are quantized as given can use them
  bool fits(int64_t f, bool qkv_q, bool o_q, bool gu_q, bool down_q) const {
    return act.k == f && h.quantized() == qkv_q && y.quantized() == o_q &&
           h2.quantized() == gu_q && act.quantized() == down_q;
  }
};

// One layer's weights and cache, and its working buffers (all allocated before the parallel
// region: nothing in it allocates tensors or throws).
struct Layer {
  const float* attn_norm = nullptr;
  const float* mlp_norm = nullptr;
  std::vector<Matrix> qkv, o, gate_up, down;  // the parts below point into these
  std::vector<Part> qkv_parts, o_parts, down_parts;
  int64_t f = 0, gu_step = 0, gu_units = 0;
  at::Tensor keys, values;  // static: the cache's first slot + 1 positions; paged: the pools
  float* kc = nullptr;
  float* vc = nullptr;
  Scratch* s = nullptr;  // its working buffers
};

at::Tensor decode_layers(const at::Tensor& x, at::TensorList attn_norms, at::TensorList mlp_norms,
                         double eps, at::TensorList qkv, at::IntArrayRef qkv_formats,
                         at::TensorList o, at::IntArrayRef o_formats, at::TensorList gate_up,
                         at::IntArrayRef gate_up_formats, at::TensorList down,
                         at::IntArrayRef down_formats, at::TensorList k_caches,
                         at::TensorList v_caches, int64_t slot, const at::Tensor& cos,
                         const at::Tensor& sin, const at::Tensor& mask, int64_t n_head,
                         int64_t n_kv_head, double scale, const std::optional<at::Tensor>& slots,
                         const std::optional<at::Tensor>& write,
                         const std::optional<at::Tensor>& norm,
                         const std::optional<at::Tensor>& head, int64_t head_format) {
  TORCH_CHECK(x.dim() == 3 && x.size(1) == 1 && x.scalar_type() == at::kFloat && x.is_cpu(),
              kOp, "x must be float32 [B, 1, C] on CPU, got ", x.sizes());
  const int64_t B = x.size(0), C = x.size(2);
  const int64_t L = int64_t(attn_norms.size());
  TORCH_CHECK(L > 0 && int64_t(mlp_norms.size()) == L && int64_t(o.size()) == L &&
                  int64_t(down.size()) == L && int64_t(k_caches.size()) == L &&
                  int64_t(v_caches.size()) == L && int64_t(o_formats.size()) == L &&
                  int64_t(down_formats.size()) == L,
              kOp, "every per-layer list needs one entry per layer (", L, " norms)");
  TORCH_CHECK(qkv.size() == qkv_formats.size() && gate_up.size() == gate_up_formats.size(), kOp,
              qkv.size(), " + ", gate_up.size(), " weights but ", qkv_formats.size(), " + ",
              gate_up_formats.size(), " formats");
  const int64_t per_qkv = int64_t(qkv.size()) / L, per_gu = int64_t(gate_up.size()) / L;
  TORCH_CHECK((per_qkv == 1 || per_qkv == 3) && per_qkv * L == int64_t(qkv.size()), kOp,
              "qkv needs 1 or 3 weights per layer, got ", qkv.size(), " for ", L, " layers");
  TORCH_CHECK((per_gu == 1 || per_gu == 2) && per_gu * L == int64_t(gate_up.size()), kOp,
              "gate_up needs 1 or 2 weights per layer, got ", gate_up.size(), " for ", L, " layers");
  TORCH_CHECK(n_kv_head > 0 && n_head > 0 && n_head % n_kv_head == 0, kOp, n_head,
              " heads do not share ", n_kv_head, " KV heads evenly");
  const at::Tensor& k0 = k_caches[0];
  const bool paged = slots.has_value() && slots->defined();
  TORCH_CHECK(paged == (write.has_value() && write->defined()), kOp,
              "a paged cache needs both slots and write");
  // static: S cache positions; paged: P pool rows, S keys per row
  int64_t S = 0, D = 0, P = 0;
  const int64_t* slot_rows = nullptr;
  const int64_t* write_rows = nullptr;
  if (paged) {
    TORCH_CHECK(k0.dim() == 3, kOp, "paged caches must be contiguous float32 [H_kv, P, D]");
    P = k0.size(1), D = k0.size(2);
    TORCH_CHECK(slots->dim() == 2 && slots->size(0) == B && slots->scalar_type() == at::kLong &&
                    slots->is_contiguous() && slots->is_cpu(),
                kOp, "slots must be contiguous int64 [B, S] on CPU, got ", slots->sizes());
    TORCH_CHECK(write->dim() == 1 && write->size(0) == B && write->scalar_type() == at::kLong &&
                    write->is_contiguous() && write->is_cpu(),
                kOp, "write must be contiguous int64 [B] on CPU, got ", write->sizes());
    S = slots->size(1);
    slot_rows = slots->data_ptr<int64_t>();
    write_rows = write->data_ptr<int64_t>();
    for (int64_t i = 0; i < B * S; ++i)
      TORCH_CHECK(slot_rows[i] >= 0 && slot_rows[i] < P, kOp, "slot ", slot_rows[i],
                  " outside a pool of ", P);
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK(write_rows[b] >= 0 && write_rows[b] < P, kOp, "write slot ", write_rows[b],
                  " outside a pool of ", P);
    TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 4 && mask.is_cpu() &&
                    (mask.size(0) == 1 || mask.size(0) == B) && mask.size(1) == 1 &&
                    mask.size(2) == 1 && mask.size(3) == S,
                kOp, "mask ", mask.sizes(), " does not fit [B|1, 1, 1, ", S, "]");
  } else {
    TORCH_CHECK(k0.dim() == 4, kOp, "caches must be contiguous float32 [B, H_kv, S, D]");
    S = k0.size(2), D = k0.size(3);
    TORCH_CHECK(slot >= 0 && slot < S, kOp, "slot ", slot, " outside a cache of ", S);
  }
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.numel() == B * D / 2 &&
                  sin.numel() == B * D / 2 && cos.scalar_type() == at::kFloat &&
                  sin.scalar_type() == at::kFloat,
              kOp, "cos and sin must be float32 [B, D/2]");
  const int64_t H = n_head, Hkv = n_kv_head, G = H / Hkv;
  const int64_t qd = H * D, kvd = Hkv * D, qkv_ld = qd + 2 * kvd;
  const auto any_quantized = [](const std::vector<Matrix>& ms) {
    return std::any_of(ms.begin(), ms.end(), [](const Matrix& m) { return m.format != kFloat; });
  };
  at::Tensor q = at::empty({B, H, 1, D}, x.options());

  std::vector<std::unique_ptr<Scratch>> scratches;
  std::vector<std::unique_ptr<Layer>> layers;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& kc = k_caches[l];
    const at::Tensor& vc = v_caches[l];
    TORCH_CHECK(kc.sizes() == vc.sizes() && kc.is_contiguous() && vc.is_contiguous() &&
                    kc.is_cpu() && vc.is_cpu() && kc.scalar_type() == at::kFloat &&
                    vc.scalar_type() == at::kFloat,
                kOp, "caches must be contiguous float32 CPU tensors, keys and values alike");
    if (paged) {
      TORCH_CHECK(kc.dim() == 3 && kc.size(0) == Hkv && kc.size(1) == P && kc.size(2) == D &&
                      D % 2 == 0,
                  kOp, "pool ", kc.sizes(), " does not fit [", Hkv, ", ", P, ", ", D,
                  "] (alike in every layer, an even head size)");
    } else {
      TORCH_CHECK(kc.dim() == 4 && kc.size(2) == S && kc.size(3) == D, kOp,
                  "caches must be [B, H_kv, S, D] alike in every layer");
      TORCH_CHECK(kc.size(0) == B && kc.size(1) == Hkv && D % 2 == 0, kOp, "cache ", kc.sizes(),
                  " does not fit ", B, " rows of ", Hkv, " KV heads");
    }
    const at::Tensor& an = attn_norms[l];
    const at::Tensor& mn = mlp_norms[l];
    TORCH_CHECK(an.numel() == C && mn.numel() == C && an.scalar_type() == at::kFloat &&
                    mn.scalar_type() == at::kFloat && an.is_contiguous() && mn.is_contiguous(),
                kOp, "norm weights must be float32 [C]");
    std::vector<Matrix> qkv_m, gu_m;
    for (int64_t i = 0; i < per_qkv; ++i)
      qkv_m.push_back(matrix(qkv[l * per_qkv + i], qkv_formats[l * per_qkv + i], C, "qkv weight"));
    if (per_qkv == 1) {
      TORCH_CHECK(qkv_m[0].n == qkv_ld, kOp, "fused qkv has ", qkv_m[0].n, " outputs, expected ",
                  qkv_ld);
    } else {
      const int64_t widths[] = {qd, kvd, kvd};
      for (int i = 0; i < 3; ++i)
        TORCH_CHECK(qkv_m[i].n == widths[i], kOp, "qkv part ", i, " has ", qkv_m[i].n,
                    " outputs, expected ", widths[i]);
    }
    const Matrix o_m = matrix(o[l], o_formats[l], qd, "o");
    TORCH_CHECK(o_m.n == C, kOp, "o has ", o_m.n, " outputs, expected ", C);
    for (int64_t i = 0; i < per_gu; ++i)
      gu_m.push_back(matrix(gate_up[l * per_gu + i], gate_up_formats[l * per_gu + i], C,
                            "gate_up weight"));
    const int64_t f = per_gu == 1 ? gu_m[0].n / 2 : gu_m[0].n;
    TORCH_CHECK(f > 0 && (per_gu == 1 ? gu_m[0].n == 2 * f : gu_m[1].n == f), kOp,
                "gate and up have different widths");
    const Matrix down_m = matrix(down[l], down_formats[l], f, "down");
    TORCH_CHECK(down_m.n == C, kOp, "down has ", down_m.n, " outputs, expected ", C);

    const bool qkv_q = any_quantized(qkv_m), o_q = o_m.format != kFloat;
    const bool gu_q = any_quantized(gu_m), down_q = down_m.format != kFloat;
    auto found = std::find_if(scratches.begin(), scratches.end(), [&](const auto& sc) {
      return sc->fits(f, qkv_q, o_q, gu_q, down_q);
    });
    if (found == scratches.end()) {
      scratches.push_back(
          std::make_unique<Scratch>(B, C, qd, qkv_ld, f, qkv_q, o_q, gu_q, down_q));
      found = scratches.end() - 1;
    }
    auto layer = std::make_unique<Layer>();
    Layer& ly = *layer;
    ly.s = found->get();
    ly.f = f;
    ly.attn_norm = an.data_ptr<float>();
    ly.mlp_norm = mn.data_ptr<float>();
    ly.qkv = std::move(qkv_m);
    ly.o = {o_m};
    ly.gate_up = std::move(gu_m);
    ly.down = {down_m};
    if (paged) {
      ly.keys = kc.unsqueeze(0);  // [1, H_kv, P, D]
      ly.values = vc.unsqueeze(0);
    } else {
      ly.keys = kc.narrow(2, 0, slot + 1);
      ly.values = vc.narrow(2, 0, slot + 1);
      llm_kernels_attend_check(q, ly.keys, ly.values, mask);
    }
    ly.kc = kc.data_ptr<float>();
    ly.vc = vc.data_ptr<float>();
    add_parts(ly.qkv_parts, ly.qkv, ly.s->qkv_out.data(), qkv_ld, B);
    add_parts(ly.o_parts, ly.o, ly.s->attn.data(), C, B);
    add_parts(ly.down_parts, ly.down, ly.s->mlp.data(), C, B);
    // gate and up together, in runs of whole blocks of 32 of the activation where anything
    // of the MLP is quantized, else of whole tiles for several inputs (24 rows)
    const bool mlp_float = !gu_q && !down_q;
    ly.gu_step = std::min(f, chunk_rows(ly.gate_up[0], mlp_float && B > 1 ? 24 : kQK, 2));
    ly.gu_units = (f + ly.gu_step - 1) / ly.gu_step;
    layers.push_back(std::move(layer));
  }
  // a unit of attention can quantize its own heads' outputs when they are whole blocks
  const bool y_by_unit = (G * D) % kQK == 0;

  // the final norm and the LM head, when given
  const bool with_head = head.has_value() && head->defined();
  TORCH_CHECK(with_head == (norm.has_value() && norm->defined()), kOp,
              "the final norm and the head come together");
  std::vector<Matrix> head_m;
  std::vector<Part> head_parts;
  std::unique_ptr<Acts> hf;
  at::Tensor logits;
  if (with_head) {
    TORCH_CHECK(norm->numel() == C && norm->scalar_type() == at::kFloat && norm->is_contiguous(),
                kOp, "the final norm's weight must be float32 [C]");
    head_m.push_back(matrix(*head, head_format, C, "head"));
    hf = std::make_unique<Acts>(B, C, head_format != kFloat);
    logits = at::empty({B, head_m[0].n}, x.options());
    add_parts(head_parts, head_m, logits.data_ptr<float>(), head_m[0].n, B);
  }
  const float* final_norm = with_head ? norm->data_ptr<float>() : nullptr;

  at::Tensor out = x.reshape({B, 1, C}).clone(at::MemoryFormat::Contiguous);  // the residual stream
  float* cur = out.data_ptr<float>();
  float* qp = q.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();

  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), 64));
  Barrier barrier(T);
  constexpr int kPhases = 5;
  std::unique_ptr<WorkShares[]> work(new WorkShares[kPhases * L + 1]);  // + the head
  for (int64_t l = 0; l < L; ++l) {
    const Layer& ly = *layers[l];
    const int64_t units[kPhases] = {int64_t(ly.qkv_parts.size()), B * Hkv,
                                    int64_t(ly.o_parts.size()), ly.gu_units,
                                    int64_t(ly.down_parts.size())};
    for (int p = 0; p < kPhases; ++p) work[kPhases * l + p].init(units[p], T);
  }
  work[kPhases * L].init(int64_t(head_parts.size()), T);

  const auto body = [&](int64_t id_begin, int64_t id_end) {
    const int64_t ids = id_end - id_begin;
    const bool first = id_begin == 0;
    for (int64_t l = 0; l < L; ++l) {
      Layer& ly = *layers[l];
      Scratch& sc = *ly.s;
      WorkShares* phase = work.get() + kPhases * l;
      // the attention's norm
      if (first) {
        rms_norm(cur, ly.attn_norm, eps, B, C, sc.h.x.data());
        sc.h.quantize_all();
      }
      barrier.arrive(ids);
      // q, k, v
      phase[0].run(id_begin, id_end, [&](int64_t i) {
        const Part& p = ly.qkv_parts[i];
        multiply(*p.m, sc.h, p.y, p.ld, p.begin, p.end);
      });
      barrier.arrive(ids);
      // per (row, KV head): RoPE, the cache write, attention over the cache
      phase[1].run(id_begin, id_end, [&](int64_t u) {
        const int64_t b = u / Hkv, hk = u % Hkv;
        const float* row = sc.qkv_out.data() + b * qkv_ld;
        const float* cb = cp + b * D / 2;
        const float* sb = sp + b * D / 2;
        float* qb = qp + (b * H + hk * G) * D;
        std::copy(row + hk * G * D, row + (hk + 1) * G * D, qb);
        rotate(qb, G, D, cb, sb);
        const int64_t at = paged ? (hk * P + write_rows[b]) * D : ((b * Hkv + hk) * S + slot) * D;
        float* kdst = ly.kc + at;
        float* vdst = ly.vc + at;
        std::copy(row + qd + hk * D, row + qd + (hk + 1) * D, kdst);
        std::copy(row + qd + kvd + hk * D, row + qd + kvd + (hk + 1) * D, vdst);
        rotate(kdst, 1, D, cb, sb);
        if (paged) {
          llm_kernels_attend_units_paged(q, ly.keys, ly.values, mask, scale, slot_rows,
                                         sc.y.x.data(), u, u + 1);
        } else {
          llm_kernels_attend_units(q, ly.keys, ly.values, mask, scale, sc.y.x.data(), u, u + 1);
        }
        if (y_by_unit) sc.y.quantize(b, hk * G * D / kQK, (hk + 1) * G * D / kQK);
      });
      barrier.arrive(ids);
      if (!y_by_unit && sc.y.quantized()) {
        if (first) sc.y.quantize_all();
        barrier.arrive(ids);
      }
      // o
      phase[2].run(id_begin, id_end, [&](int64_t i) {
        const Part& p = ly.o_parts[i];
        multiply(*p.m, sc.y, p.y, p.ld, p.begin, p.end);
      });
      barrier.arrive(ids);
      // the residual, the MLP's norm
      if (first) {
        for (int64_t i = 0; i < B * C; ++i) cur[i] += sc.attn[i];
        rms_norm(cur, ly.mlp_norm, eps, B, C, sc.h2.x.data());
        sc.h2.quantize_all();
      }
      barrier.arrive(ids);
      // gate and up, SwiGLU, the activation's quantization, a run of rows at a time
      const int64_t f = ly.f;
      phase[3].run(id_begin, id_end, [&](int64_t i) {
        const int64_t a = i * ly.gu_step, e = std::min(f, a + ly.gu_step);
        float* gu = sc.gu.data();
        if (ly.gate_up.size() == 1) {
          multiply(ly.gate_up[0], sc.h2, gu, 2 * f, a, e);
          multiply(ly.gate_up[0], sc.h2, gu, 2 * f, f + a, f + e);
        } else {
          multiply(ly.gate_up[0], sc.h2, gu, 2 * f, a, e);
          multiply(ly.gate_up[1], sc.h2, gu + f, 2 * f, a, e);
        }
        for (int64_t b = 0; b < B; ++b) {
          const float* gs = gu + b * 2 * f;
          swiglu(gs + a, gs + f + a, sc.act.x.data() + b * f + a, e - a);
          sc.act.quantize(b, a / kQK, e / kQK);  // a quantized down has f % 32 == 0
        }
      });
      barrier.arrive(ids);
      // down and the residual
      phase[4].run(id_begin, id_end, [&](int64_t i) {
        const Part& p = ly.down_parts[i];
        multiply(*p.m, sc.act, p.y, p.ld, p.begin, p.end);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t j = p.begin; j < p.end; ++j) cur[b * C + j] += sc.mlp[b * C + j];
      });
      if (l + 1 < L || with_head) barrier.arrive(ids);
    }
    if (!with_head) return;
    if (first) {
      rms_norm(cur, final_norm, eps, B, C, hf->x.data());
      hf->quantize_all();
    }
    barrier.arrive(ids);
    work[kPhases * L].run(id_begin, id_end, [&](int64_t i) {
      const Part& p = head_parts[i];
      multiply(*p.m, *hf, p.y, p.ld, p.begin, p.end);
    });
  };
  if (T == 1) {
    body(0, 1);
  } else if (!llm_kernels_team_run(T, [&](int64_t id) { body(id, id + 1); })) {
    at::parallel_for(0, T, 1, body);  // the team is busy with another thread's step
  }
  return with_head ? logits : out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llm_kernels, lib) {
  lib.def(
      "decode_layers(Tensor x, Tensor[] attn_norms, Tensor[] mlp_norms, float eps, Tensor[] qkv, "
      "int[] qkv_formats, Tensor[] o, int[] o_formats, Tensor[] gate_up, int[] gate_up_formats, "
      "Tensor[] down, int[] down_formats, Tensor(a!)[] k_caches, Tensor(b!)[] v_caches, int slot, "
      "Tensor cos, Tensor sin, Tensor mask, int n_head, int n_kv_head, float scale, "
      "Tensor? slots=None, Tensor? write=None, Tensor? norm=None, Tensor? head=None, "
      "int head_format=-1) -> Tensor");
}

TORCH_LIBRARY_IMPL(llm_kernels, CPU, lib) { lib.impl("decode_layers", &decode_layers); }
