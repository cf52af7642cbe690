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
// qkv: [Wq, Wk, Wv] or one fused [Wqkv] (rows q, then k, then v); gate_up: [Wg, Wu] or one
// fused [Wgu] (gate rows, then up rows). x: [B, 1, C] float32; caches: [B, H_kv, S, D]
// float32 contiguous, written at `slot`; cos, sin: [B, D/2]; mask: bool [B|1, 1, 1, slot + 1].

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

at::Tensor llm_kernels_linear_rows(const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias);
at::Tensor llm_kernels_attend_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& mask, double scale);
at::Tensor llm_kernels_quant_rows(const at::Tensor& x, const at::Tensor& qweight,
                                  const std::optional<at::Tensor>& scales,
                                  const std::optional<at::Tensor>& mins, int64_t format,
                                  int64_t group_size, const std::optional<at::Tensor>& bias,
                                  int64_t activations);

namespace {

constexpr int64_t kFloat = -1;  // float32 row-major weights

// x [B, K] (contiguous) times W.T -> [B, N]
at::Tensor product(const at::Tensor& x, const at::Tensor& w, int64_t format) {
  if (format == kFloat) return llm_kernels_linear_rows(x, w, std::nullopt);
  return llm_kernels_quant_rows(x, w, std::nullopt, std::nullopt, format, 32, std::nullopt,
                                /*activations=*/1);
}

int64_t out_features(const at::Tensor& w, int64_t format, int64_t k) {
  TORCH_CHECK(w.dim() == 2, "decode_layer: weights must be 2-D");
  if (format == kFloat) {
    TORCH_CHECK(w.size(1) == k, "decode_layer: a float weight has ", w.size(1),
                " inputs, expected ", k);
  } else {
    static constexpr int64_t kBlockBytes[] = {34, 18, 20};
    TORCH_CHECK(format >= 0 && format <= 2, "decode_layer: unknown weight format ", format);
    TORCH_CHECK(w.size(1) == k / 32 * kBlockBytes[format], "decode_layer: a quantized weight's ",
                "rows hold ", w.size(1), " bytes, expected ", k / 32 * kBlockBytes[format]);
  }
  return w.size(0);
}

// y = weight * x / sqrt(mean(x^2) + eps), row by row (RMSNorm in float32)
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t rows = x.size(0), c = x.size(1);
  at::Tensor y = at::empty({rows, c}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * c;
    float ss = 0.f;
    for (int64_t i = 0; i < c; ++i) ss += xr[i] * xr[i];
    const float inv = 1.f / std::sqrt(ss / float(c) + float(eps));
    for (int64_t i = 0; i < c; ++i) yp[r * c + i] = wp[i] * (xr[i] * inv);
  }
  return y;
}

// Rotate `heads` heads of D values at p (row stride ld) by cos, sin [D/2] (half-split layout).
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

// Split products: up to three outputs of the fused or separate weights, per row pointers.
struct Parts {
  std::vector<at::Tensor> outs;  // keep the results alive
  std::vector<const float*> base;
  std::vector<int64_t> ld, offset;
};

// The products of `ws` with x, and where each of `widths` outputs starts in them.
Parts products(const at::Tensor& x, const std::vector<at::Tensor>& ws,
               const std::vector<int64_t>& formats, const std::vector<int64_t>& widths,
               const char* what) {
  const int64_t k = x.size(1);
  TORCH_CHECK(ws.size() == formats.size(), "decode_layer: ", what, ": ", ws.size(),
              " weights but ", formats.size(), " formats");
  Parts parts;
  if (ws.size() == 1) {
    int64_t total = 0;
    for (int64_t wd : widths) total += wd;
    TORCH_CHECK(out_features(ws[0], formats[0], k) == total, "decode_layer: fused ", what,
                " has ", ws[0].size(0), " outputs, expected ", total);
    parts.outs.push_back(product(x, ws[0], formats[0]));
    int64_t start = 0;
    for (int64_t wd : widths) {
      parts.base.push_back(parts.outs[0].data_ptr<float>());
      parts.ld.push_back(total);
      parts.offset.push_back(start);
      start += wd;
    }
    return parts;
  }
  TORCH_CHECK(ws.size() == widths.size(), "decode_layer: ", what, " needs 1 or ", widths.size(),
              " weights, got ", ws.size());
  for (size_t i = 0; i < ws.size(); ++i) {
    TORCH_CHECK(out_features(ws[i], formats[i], k) == widths[i], "decode_layer: ", what, " part ",
                i, " has ", ws[i].size(0), " outputs, expected ", widths[i]);
    parts.outs.push_back(product(x, ws[i], formats[i]));
    parts.base.push_back(parts.outs.back().data_ptr<float>());
    parts.ld.push_back(widths[i]);
    parts.offset.push_back(0);
  }
  return parts;
}

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
  const int64_t qd = n_head * D, kvd = n_kv_head * D;
  const at::Tensor x2 = x.reshape({B, C}).contiguous();

  // attention
  const at::Tensor h = rms_norm(x2, attn_norm, eps);
  Parts p = products(h, qkv.vec(), qkv_formats.vec(), {qd, kvd, kvd}, "qkv");
  at::Tensor q = at::empty({B, n_head, 1, D}, x.options());
  float* qp = q.data_ptr<float>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const float* qs = p.base[0] + b * p.ld[0] + p.offset[0];
    const float* ks = p.base[1] + b * p.ld[1] + p.offset[1];
    const float* vs = p.base[2] + b * p.ld[2] + p.offset[2];
    float* qb = qp + b * qd;
    for (int64_t i = 0; i < qd; ++i) qb[i] = qs[i];
    rotate(qb, n_head, D, cp + b * D / 2, sp + b * D / 2);
    for (int64_t hk = 0; hk < n_kv_head; ++hk) {
      float* kdst = kc + ((b * n_kv_head + hk) * S + slot) * D;
      float* vdst = vc + ((b * n_kv_head + hk) * S + slot) * D;
      for (int64_t i = 0; i < D; ++i) kdst[i] = ks[hk * D + i], vdst[i] = vs[hk * D + i];
      rotate(kdst, 1, D, cp + b * D / 2, sp + b * D / 2);
    }
  }
  p = Parts();
  const at::Tensor keys = k_cache.narrow(2, 0, slot + 1);
  const at::Tensor values = v_cache.narrow(2, 0, slot + 1);
  const at::Tensor y = llm_kernels_attend_rows(q, keys, values, mask, scale);  // [B, H, 1, D]
  const at::Tensor attn = product(y.reshape({B, qd}), o, o_format);             // [B, C]
  TORCH_CHECK(attn.size(1) == C, "decode_layer: o has ", attn.size(1), " outputs, expected ", C);
  at::Tensor out = at::empty({B, 1, C}, x.options());
  float* op = out.data_ptr<float>();
  const float* xp = x2.data_ptr<float>();
  const float* ap = attn.data_ptr<float>();
  for (int64_t i = 0; i < B * C; ++i) op[i] = xp[i] + ap[i];

  // MLP
  const at::Tensor h2 = rms_norm(out.view({B, C}), mlp_norm, eps);
  TORCH_CHECK(gate_up.size() == 1 || gate_up.size() == 2, "decode_layer: gate_up needs 1 or 2 weights");
  const int64_t f = gate_up.size() == 1 ? gate_up[0].size(0) / 2 : gate_up[0].size(0);
  Parts g = products(h2, gate_up.vec(), gate_up_formats.vec(), {f, f}, "gate_up");
  at::Tensor act = at::empty({B, f}, x.options());
  float* actp = act.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const float* gs = g.base[0] + b * g.ld[0] + g.offset[0];
    const float* us = g.base[1] + b * g.ld[1] + g.offset[1];
    for (int64_t i = 0; i < f; ++i) {
      const float gv = gs[i];
      actp[b * f + i] = gv / (1.f + std::exp(-gv)) * us[i];
    }
  }
  const at::Tensor mlp = product(act, down, down_format);  // [B, C]
  TORCH_CHECK(mlp.size(1) == C, "decode_layer: down has ", mlp.size(1), " outputs, expected ", C);
  const float* mp = mlp.data_ptr<float>();
  for (int64_t i = 0; i < B * C; ++i) op[i] += mp[i];
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
