/*
 * Fused row-wise kernels of a transformer block on wasm (built with compact-gemm.c into one module by
 * scripts/build-kernels.mjs): the normalizations and gated activations that autodiff of their
 * formulas runs as 6–10 tfjs kernels each way, here one pass forward and one backward. Shapes:
 * x (rows, d) row-major, weights and biases (d). Frozen affine parameters (LoRA): only dx is computed.
 * No fused multiply-add anywhere, so both arithmetic builds give the same bits; row sums go 4 lanes at
 * a time, then the lanes in order, then the tail: a fixed order, independent of rows and threads.
 * The formulas are shared/model/norm-ops.ts's (tested against its tf-op forms and autodiff).
 */
#include <stdint.h>
#include <wasm_simd128.h>

#define INLINE static inline __attribute__((always_inline))

INLINE v128_t splat(float v) { return wasm_f32x4_splat(v); }

/* Σ a[e] over e < d (4 lanes, then lanes 0..3, then the tail). */
INLINE float row_sum(const float *a, int d) {
  v128_t acc = splat(0.0f);
  int e = 0;
  for (; e + 4 <= d; e += 4) acc = wasm_f32x4_add(acc, wasm_v128_load(a + e));
  float s = ((wasm_f32x4_extract_lane(acc, 0) + wasm_f32x4_extract_lane(acc, 1)) + wasm_f32x4_extract_lane(acc, 2)) +
            wasm_f32x4_extract_lane(acc, 3);
  for (; e < d; e++) s += a[e];
  return s;
}

/* Σ a[e]·b[e] over e < d, in row_sum's order. */
INLINE float row_dot(const float *a, const float *b, int d) {
  v128_t acc = splat(0.0f);
  int e = 0;
  for (; e + 4 <= d; e += 4) acc = wasm_f32x4_add(acc, wasm_f32x4_mul(wasm_v128_load(a + e), wasm_v128_load(b + e)));
  float s = ((wasm_f32x4_extract_lane(acc, 0) + wasm_f32x4_extract_lane(acc, 1)) + wasm_f32x4_extract_lane(acc, 2)) +
            wasm_f32x4_extract_lane(acc, 3);
  for (; e < d; e++) s += a[e] * b[e];
  return s;
}

/* Σ (a[e] − c)² over e < d, in row_sum's order. */
INLINE float row_centered_squares(const float *a, float c, int d) {
  v128_t acc = splat(0.0f), cv = splat(c);
  int e = 0;
  for (; e + 4 <= d; e += 4) {
    v128_t t = wasm_f32x4_sub(wasm_v128_load(a + e), cv);
    acc = wasm_f32x4_add(acc, wasm_f32x4_mul(t, t));
  }
  float s = ((wasm_f32x4_extract_lane(acc, 0) + wasm_f32x4_extract_lane(acc, 1)) + wasm_f32x4_extract_lane(acc, 2)) +
            wasm_f32x4_extract_lane(acc, 3);
  for (; e < d; e++) s += (a[e] - c) * (a[e] - c);
  return s;
}

/*
 * exp(x) for 4 lanes: x = n·ln2 + r, |r| ≤ ln2/2 (ln2 in two parts), e^r by a degree-7 polynomial
 * (Cephes' expf coefficients), times 2^n through the exponent bits. x is clamped to [−87.3, 88.0]:
 * 2^n stays a normal float (the sigmoids below saturate long before).
 * Cheap forms of the same results (V8 emits one instruction for each, where f32x4.min/max need a
 * NaN-and-signed-zero sequence and i32x4.trunc_sat a saturation one): the clamp uses pmin/pmax, which
 * keep a NaN x as x does; 2^n's bits come from n + 1.5·2²³, whose low bits hold the integer n.
 */
INLINE v128_t exp4(v128_t x) {
  x = wasm_f32x4_pmax(wasm_f32x4_pmin(x, splat(88.0f)), splat(-87.33654f));
  v128_t n = wasm_f32x4_nearest(wasm_f32x4_mul(x, splat(1.44269504088896341f)));
  v128_t r = wasm_f32x4_sub(x, wasm_f32x4_mul(n, splat(0.693359375f)));
  r = wasm_f32x4_sub(r, wasm_f32x4_mul(n, splat(-2.12194440e-4f)));
  v128_t p = splat(1.9875691500e-4f);
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), splat(1.3981999507e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), splat(8.3334519073e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), splat(4.1665795894e-2f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), splat(1.6666665459e-1f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), splat(5.0000001201e-1f));
  p = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_mul(wasm_f32x4_mul(p, r), r), r), splat(1.0f));
  /* |n| ≤ 127: bits(n + 1.5·2²³) = 0x4B400000 + n, and the shift drops everything above n + 127 */
  v128_t scale = wasm_i32x4_shl(wasm_i32x4_add(wasm_f32x4_add(n, splat(12582912.0f)), wasm_i32x4_splat(127)), 23);
  return wasm_f32x4_mul(p, scale);
}

/* σ(x) = 1 / (1 + e^−x) */
INLINE v128_t sigmoid4(v128_t x) { return wasm_f32x4_div(splat(1.0f), wasm_f32x4_add(splat(1.0f), exp4(wasm_f32x4_neg(x)))); }

/* Elementwise loops: 4 lanes at a time, the tail through a zero-padded vector (no scalar math to keep in step). */
#define ELEMENTWISE(count, ...)                                                                      \
  for (int e = 0; e < (count); e += 4) {                                                             \
    int lanes = (count) - e < 4 ? (count) - e : 4;                                                   \
    __VA_ARGS__                                                                                      \
  }

INLINE v128_t load_n(const float *p, int lanes) {
  if (lanes == 4) return wasm_v128_load(p);
  v128_t v = splat(0.0f);
  if (lanes > 0) v = wasm_f32x4_replace_lane(v, 0, p[0]);
  if (lanes > 1) v = wasm_f32x4_replace_lane(v, 1, p[1]);
  if (lanes > 2) v = wasm_f32x4_replace_lane(v, 2, p[2]);
  return v;
}
INLINE void store_n(float *p, v128_t v, int lanes) {
  if (lanes == 4) {
    wasm_v128_store(p, v);
    return;
  }
  if (lanes > 0) p[0] = wasm_f32x4_extract_lane(v, 0);
  if (lanes > 1) p[1] = wasm_f32x4_extract_lane(v, 1);
  if (lanes > 2) p[2] = wasm_f32x4_extract_lane(v, 2);
}

/* ---------------------------------------------------------------------------------------------- */

/* RMSNorm: rstd = 1/√(Σx²/d + eps), y = (x·rstd)·w. */
__attribute__((export_name("lm_rms_norm"))) void lm_rms_norm(const float *x, const float *w, float *y, float *rstd,
                                                           int rows, int d, float eps) {
  for (int i = 0; i < rows; i++) {
    const float *xi = x + i * d;
    float *yi = y + i * d;
    float r = 1.0f / __builtin_sqrtf(row_dot(xi, xi, d) / (float)d + eps);
    rstd[i] = r;
    v128_t rv = splat(r);
    ELEMENTWISE(d, store_n(yi + e, wasm_f32x4_mul(wasm_f32x4_mul(load_n(xi + e, lanes), rv), load_n(w + e, lanes)),
                           lanes);)
  }
}

/* RMSNorm's dx = rstd·(g − x̂·Σ(g·x̂)/d), g = dy·w, x̂ = x·rstd; `scratch` holds d floats. */
__attribute__((export_name("lm_rms_norm_grad"))) void lm_rms_norm_grad(const float *dy, const float *x, const float *w,
                                                                     const float *rstd, float *dx, int rows, int d,
                                                                     float *scratch) {
  for (int i = 0; i < rows; i++) {
    const float *xi = x + i * d, *dyi = dy + i * d;
    float *dxi = dx + i * d;
    v128_t rv = splat(rstd[i]);
    /* g·x̂ into dx (scratch for it), g into scratch */
    ELEMENTWISE(d, {
      v128_t g = wasm_f32x4_mul(load_n(dyi + e, lanes), load_n(w + e, lanes));
      store_n(scratch + e, g, lanes);
      store_n(dxi + e, wasm_f32x4_mul(g, wasm_f32x4_mul(load_n(xi + e, lanes), rv)), lanes);
    })
    v128_t mv = splat(row_sum(dxi, d) / (float)d);
    ELEMENTWISE(d, {
      v128_t xhat = wasm_f32x4_mul(load_n(xi + e, lanes), rv);
      v128_t inner = wasm_f32x4_sub(load_n(scratch + e, lanes), wasm_f32x4_mul(xhat, mv));
      store_n(dxi + e, wasm_f32x4_mul(inner, rv), lanes);
    })
  }
}

/* LayerNorm (biased variance): mean, rstd = 1/√(Σ(x − mean)²/d + eps), y = ((x − mean)·rstd)·w + b. */
__attribute__((export_name("lm_layer_norm"))) void lm_layer_norm(const float *x, const float *w, const float *b,
                                                               float *y, float *mean, float *rstd, int rows, int d,
                                                               float eps) {
  for (int i = 0; i < rows; i++) {
    const float *xi = x + i * d;
    float *yi = y + i * d;
    float m = row_sum(xi, d) / (float)d;
    float r = 1.0f / __builtin_sqrtf(row_centered_squares(xi, m, d) / (float)d + eps);
    mean[i] = m;
    rstd[i] = r;
    v128_t mv = splat(m), rv = splat(r);
    ELEMENTWISE(d, {
      v128_t xhat = wasm_f32x4_mul(wasm_f32x4_sub(load_n(xi + e, lanes), mv), rv);
      store_n(yi + e, wasm_f32x4_add(wasm_f32x4_mul(xhat, load_n(w + e, lanes)), load_n(b + e, lanes)), lanes);
    })
  }
}

/* LayerNorm's dx = rstd·(g − Σg/d − x̂·Σ(g·x̂)/d), g = dy·w, x̂ = (x − mean)·rstd; `scratch` holds d floats. */
__attribute__((export_name("lm_layer_norm_grad"))) void lm_layer_norm_grad(const float *dy, const float *x,
                                                                         const float *w, const float *mean,
                                                                         const float *rstd, float *dx, int rows, int d,
                                                                         float *scratch) {
  for (int i = 0; i < rows; i++) {
    const float *xi = x + i * d, *dyi = dy + i * d;
    float *dxi = dx + i * d;
    v128_t mv = splat(mean[i]), rv = splat(rstd[i]);
    ELEMENTWISE(d, {
      v128_t g = wasm_f32x4_mul(load_n(dyi + e, lanes), load_n(w + e, lanes));
      store_n(scratch + e, g, lanes);
      v128_t xhat = wasm_f32x4_mul(wasm_f32x4_sub(load_n(xi + e, lanes), mv), rv);
      store_n(dxi + e, wasm_f32x4_mul(g, xhat), lanes);
    })
    v128_t gm = splat(row_sum(scratch, d) / (float)d);
    v128_t gx = splat(row_sum(dxi, d) / (float)d);
    ELEMENTWISE(d, {
      v128_t xhat = wasm_f32x4_mul(wasm_f32x4_sub(load_n(xi + e, lanes), mv), rv);
      v128_t inner = wasm_f32x4_sub(wasm_f32x4_sub(load_n(scratch + e, lanes), gm), wasm_f32x4_mul(xhat, gx));
      store_n(dxi + e, wasm_f32x4_mul(inner, rv), lanes);
    })
  }
}

/* SwiGLU: out = (g·σ(g))·u. */
__attribute__((export_name("lm_swiglu"))) void lm_swiglu(const float *g, const float *u, float *out, int count) {
  ELEMENTWISE(count, {
    v128_t gv = load_n(g + e, lanes);
    store_n(out + e, wasm_f32x4_mul(wasm_f32x4_mul(gv, sigmoid4(gv)), load_n(u + e, lanes)), lanes);
  })
}

/* SwiGLU's dg = dy·u·σ·(1 + g·(1 − σ)), du = dy·(g·σ), σ = σ(g) recomputed. */
__attribute__((export_name("lm_swiglu_grad"))) void lm_swiglu_grad(const float *dy, const float *g, const float *u,
                                                                 float *dg, float *du, int count) {
  v128_t one = splat(1.0f);
  ELEMENTWISE(count, {
    v128_t gv = load_n(g + e, lanes), dyv = load_n(dy + e, lanes);
    v128_t s = sigmoid4(gv);
    v128_t slope = wasm_f32x4_mul(s, wasm_f32x4_add(one, wasm_f32x4_mul(gv, wasm_f32x4_sub(one, s))));
    store_n(dg + e, wasm_f32x4_mul(wasm_f32x4_mul(dyv, load_n(u + e, lanes)), slope), lanes);
    store_n(du + e, wasm_f32x4_mul(dyv, wasm_f32x4_mul(gv, s)), lanes);
  })
}

#define GELU_A 0.044715f
#define GELU_C 1.5957691216057308f /* 2·√(2/π) */

/* gelu_new as x·σ(u), u = C·x·(1 + a·x²) (norm-ops.ts geluNew). */
__attribute__((export_name("lm_gelu"))) void lm_gelu(const float *x, float *out, int count) {
  ELEMENTWISE(count, {
    v128_t xv = load_n(x + e, lanes);
    v128_t u = wasm_f32x4_mul(
        wasm_f32x4_mul(xv, wasm_f32x4_add(wasm_f32x4_mul(wasm_f32x4_mul(xv, xv), splat(GELU_A)), splat(1.0f))),
        splat(GELU_C));
    store_n(out + e, wasm_f32x4_mul(xv, sigmoid4(u)), lanes);
  })
}

/* gelu_new's dx = dy·(σ + x·σ(1 − σ)·(C + 3aC·x²)). */
__attribute__((export_name("lm_gelu_grad"))) void lm_gelu_grad(const float *dy, const float *x, float *dx, int count) {
  v128_t one = splat(1.0f);
  ELEMENTWISE(count, {
    v128_t xv = load_n(x + e, lanes);
    v128_t square = wasm_f32x4_mul(xv, xv);
    v128_t u = wasm_f32x4_mul(wasm_f32x4_mul(xv, wasm_f32x4_add(wasm_f32x4_mul(square, splat(GELU_A)), one)),
                              splat(GELU_C));
    v128_t s = sigmoid4(u);
    v128_t slope = wasm_f32x4_add(wasm_f32x4_mul(square, splat(3.0f * GELU_A * GELU_C)), splat(GELU_C));
    v128_t dsdx = wasm_f32x4_mul(wasm_f32x4_mul(s, wasm_f32x4_sub(one, s)), slope);
    store_n(dx + e, wasm_f32x4_mul(load_n(dy + e, lanes), wasm_f32x4_add(s, wasm_f32x4_mul(xv, dsdx))), lanes);
  })
}

/*
 * Rotary position embedding per head (HF's rotate_half form), x (rows, heads·hs), cos and sin (rows, hs):
 *   forward  out[j] = x[j]·cos[j] + r[j]·sin[j],   r[j] = −x[j + hs/2] (j < hs/2), x[j − hs/2] (j ≥ hs/2);
 *   backward dx[j]  = dy[j]·cos[j] + t[j],          t[j] = (dy·sin)[j + hs/2] (j < hs/2), −(dy·sin)[j − hs/2].
 * Each is one multiply per term and one add, as the tf-op form (llama.ts applyRope) computes them, whose
 * rotation (a ±1 permutation matmul) is exact: the same bits.
 */
__attribute__((export_name("lm_rope"))) void lm_rope(const float *x, const float *cs, const float *sn, float *out,
                                                     int rows, int heads, int hs, int backward) {
  int half = hs / 2;
  for (int n = 0; n < rows; n++) {
    const float *c = cs + n * hs, *s = sn + n * hs;
    for (int h = 0; h < heads; h++) {
      const float *xa = x + (n * heads + h) * hs, *xb = xa + half;
      float *oa = out + (n * heads + h) * hs, *ob = oa + half;
      int j = 0;
      if (!backward) {
        for (; j + 4 <= half; j += 4) {
          v128_t a = wasm_v128_load(xa + j), b = wasm_v128_load(xb + j);
          wasm_v128_store(oa + j, wasm_f32x4_add(wasm_f32x4_mul(a, wasm_v128_load(c + j)),
                                                 wasm_f32x4_mul(wasm_f32x4_neg(b), wasm_v128_load(s + j))));
          wasm_v128_store(ob + j, wasm_f32x4_add(wasm_f32x4_mul(b, wasm_v128_load(c + half + j)),
                                                 wasm_f32x4_mul(a, wasm_v128_load(s + half + j))));
        }
        for (; j < half; j++) {
          float a = xa[j], b = xb[j];
          oa[j] = a * c[j] + (-b) * s[j];
          ob[j] = b * c[half + j] + a * s[half + j];
        }
      } else {
        for (; j + 4 <= half; j += 4) {
          v128_t a = wasm_v128_load(xa + j), b = wasm_v128_load(xb + j);
          v128_t sa = wasm_f32x4_mul(a, wasm_v128_load(s + j)), sb = wasm_f32x4_mul(b, wasm_v128_load(s + half + j));
          wasm_v128_store(oa + j, wasm_f32x4_add(wasm_f32x4_mul(a, wasm_v128_load(c + j)), sb));
          wasm_v128_store(ob + j, wasm_f32x4_add(wasm_f32x4_mul(b, wasm_v128_load(c + half + j)), wasm_f32x4_neg(sa)));
        }
        for (; j < half; j++) {
          float a = xa[j], b = xb[j];
          oa[j] = a * c[j] + b * s[half + j];
          ob[j] = b * c[half + j] + -(a * s[j]);
        }
      }
    }
  }
}

/*
 * out (outer, c, b, inner) = in (outer, b, c, inner) with axes 1 and 2 swapped: attention's head
 * transposes (B, T, H, hs) ↔ (B, H, T, hs). A copy, so exact.
 */
__attribute__((export_name("lm_swap_axes"))) void lm_swap_axes(const float *in, float *out, int outer, int b, int c,
                                                               int inner) {
  for (int o = 0; o < outer; o++) {
    const float *src = in + o * b * c * inner;
    float *dst = out + o * b * c * inner;
    for (int j = 0; j < b; j++) {
      for (int k = 0; k < c; k++) {
        const float *s = src + (j * c + k) * inner;
        float *d = dst + (k * b + j) * inner;
        int e = 0;
        for (; e + 4 <= inner; e += 4) wasm_v128_store(d + e, wasm_v128_load(s + e));
        for (; e < inner; e++) d[e] = s[e];
      }
    }
  }
}

/*
 * Attention's probabilities P = softmax(scores·scale + mask) row by row, scores (rows, s) and the additive
 * mask (mask_rows, s) repeating every mask_rows rows: t = scores·scale + mask, P = e^(t − max t) / Σ. Where
 * t − max t < −87.3 (a masked key) P is exactly 0, as e^t underflows in the tf-op form.
 */
__attribute__((export_name("lm_masked_softmax"))) void lm_masked_softmax(const float *scores, const float *mask,
                                                                         float *p, int rows, int mask_rows, int s,
                                                                         float scale) {
  v128_t floor = splat(-87.33654f);
  for (int i = 0; i < rows; i++) {
    const float *x = scores + i * s, *m = mask + (i % mask_rows) * s;
    float *pi = p + i * s;
    /* t and its maximum: 4 lanes (pmax, as t > max ? t : max per lane), then the lanes and the tail */
    v128_t sv = splat(scale), mv = splat(-__builtin_inff());
    int e = 0;
    for (; e + 4 <= s; e += 4) {
      v128_t t = wasm_f32x4_add(wasm_f32x4_mul(wasm_v128_load(x + e), sv), wasm_v128_load(m + e));
      wasm_v128_store(pi + e, t);
      mv = wasm_f32x4_pmax(mv, t);
    }
    float mx = wasm_f32x4_extract_lane(mv, 0), l1 = wasm_f32x4_extract_lane(mv, 1),
          l2 = wasm_f32x4_extract_lane(mv, 2), l3 = wasm_f32x4_extract_lane(mv, 3);
    mx = l1 > mx ? l1 : mx;
    mx = l2 > mx ? l2 : mx;
    mx = l3 > mx ? l3 : mx;
    for (; e < s; e++) {
      float t = x[e] * scale + m[e];
      pi[e] = t;
      mx = t > mx ? t : mx;
    }
    mv = splat(mx);
    ELEMENTWISE(s, {
      v128_t t = wasm_f32x4_sub(load_n(pi + e, lanes), mv);
      store_n(pi + e, wasm_v128_and(exp4(t), wasm_f32x4_ge(t, floor)), lanes);
    })
    v128_t sum = splat(row_sum(pi, s));
    ELEMENTWISE(s, { store_n(pi + e, wasm_f32x4_div(load_n(pi + e, lanes), sum), lanes); })
  }
}

/* Its gradient: dScores = P ⊙ (dP − Σ(dP ⊙ P)) · scale per row (attention.ts's tf-op form). */
__attribute__((export_name("lm_softmax_grad"))) void lm_softmax_grad(const float *dp, const float *p, float *ds,
                                                                     int rows, int s, float scale) {
  v128_t sv = splat(scale);
  for (int i = 0; i < rows; i++) {
    const float *dpi = dp + i * s, *pi = p + i * s;
    float *dsi = ds + i * s;
    v128_t dot = splat(row_dot(dpi, pi, s));
    ELEMENTWISE(s, {
      v128_t pv = load_n(pi + e, lanes);
      store_n(dsi + e, wasm_f32x4_mul(wasm_f32x4_mul(pv, wasm_f32x4_sub(load_n(dpi + e, lanes), dot)), sv), lanes);
    })
  }
}

/*
 * The LoRA branch of an adapted linear, row by row, next to its frozen product y (rows of n, r ≤ 64 factors):
 *   forward   u = scale·(x Aᵀ) (n, r),  out = y + u Bᵀ
 *   backward  du = scale·(dy B) (n, r), dx = dx_frozen + du A   (dx_frozen 0: dx = du A)
 * dA = duᵀ x and dB = dyᵀ u are products over the rows: lm_gemm computes them (kernels/wasm-kernels.ts).
 * x (n, d_in), A (r, d_in), B (d_out, r); `scratch` holds Bᵀ (r·d_out floats). Dots in row_dot's order;
 * the r terms of a sum in order j = 0 … r−1.
 */
INLINE void transpose_small(const float *b, float *bt, int d_out, int r) {
  for (int k = 0; k < d_out; k++)
    for (int j = 0; j < r; j++) bt[j * d_out + k] = b[k * r + j];
}

/*
 * row[e] = base[e] + Σ_j coef[j]·m[j·d + e] for e < d (base 0: no base), the sum over j in order: four
 * terms per pass (their splats held in registers), the partial sum kept in row between passes.
 */
INLINE void combine_rows(const float *base, const float *coef, const float *m, float *row, int r, int d) {
  int j = 0;
  for (; j + 4 <= r; j += 4) {
    v128_t c0 = splat(coef[j]), c1 = splat(coef[j + 1]), c2 = splat(coef[j + 2]), c3 = splat(coef[j + 3]);
    const float *m0 = m + j * d, *m1 = m0 + d, *m2 = m1 + d, *m3 = m2 + d;
    int e = 0;
    for (; e + 4 <= d; e += 4) {
      v128_t acc = j ? wasm_v128_load(row + e) : splat(0.0f);
      acc = wasm_f32x4_add(acc, wasm_f32x4_mul(c0, wasm_v128_load(m0 + e)));
      acc = wasm_f32x4_add(acc, wasm_f32x4_mul(c1, wasm_v128_load(m1 + e)));
      acc = wasm_f32x4_add(acc, wasm_f32x4_mul(c2, wasm_v128_load(m2 + e)));
      acc = wasm_f32x4_add(acc, wasm_f32x4_mul(c3, wasm_v128_load(m3 + e)));
      wasm_v128_store(row + e, acc);
    }
    for (; e < d; e++) {
      float acc = j ? row[e] : 0.0f;
      acc += coef[j] * m0[e];
      acc += coef[j + 1] * m1[e];
      acc += coef[j + 2] * m2[e];
      acc += coef[j + 3] * m3[e];
      row[e] = acc;
    }
  }
  for (; j < r; j++) {
    v128_t c = splat(coef[j]);
    const float *mj = m + j * d;
    int e = 0;
    for (; e + 4 <= d; e += 4)
      wasm_v128_store(row + e, wasm_f32x4_add(j ? wasm_v128_load(row + e) : splat(0.0f), wasm_f32x4_mul(c, wasm_v128_load(mj + e))));
    for (; e < d; e++) row[e] = (j ? row[e] : 0.0f) + coef[j] * mj[e];
  }
  if (!base) return;
  int e = 0;
  for (; e + 4 <= d; e += 4) wasm_v128_store(row + e, wasm_f32x4_add(wasm_v128_load(base + e), wasm_v128_load(row + e)));
  for (; e < d; e++) row[e] = base[e] + row[e];
}

/* out[j] = scale·(Σ_e x[e]·m[j·d + e]) for j < r, each in row_dot's order; four rows of m per pass over x */
INLINE void dots(const float *x, const float *m, float *out, int r, int d, float scale) {
  int j = 0;
  for (; j + 4 <= r; j += 4) {
    const float *m0 = m + j * d, *m1 = m0 + d, *m2 = m1 + d, *m3 = m2 + d;
    v128_t a0 = splat(0.0f), a1 = a0, a2 = a0, a3 = a0;
    int e = 0;
    for (; e + 4 <= d; e += 4) {
      v128_t xv = wasm_v128_load(x + e);
      a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(xv, wasm_v128_load(m0 + e)));
      a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(xv, wasm_v128_load(m1 + e)));
      a2 = wasm_f32x4_add(a2, wasm_f32x4_mul(xv, wasm_v128_load(m2 + e)));
      a3 = wasm_f32x4_add(a3, wasm_f32x4_mul(xv, wasm_v128_load(m3 + e)));
    }
    v128_t acc[4] = {a0, a1, a2, a3};
    const float *rows[4] = {m0, m1, m2, m3};
    for (int q = 0; q < 4; q++) {
      float s = ((wasm_f32x4_extract_lane(acc[q], 0) + wasm_f32x4_extract_lane(acc[q], 1)) +
                 wasm_f32x4_extract_lane(acc[q], 2)) +
                wasm_f32x4_extract_lane(acc[q], 3);
      for (int t = e; t < d; t++) s += x[t] * rows[q][t];
      out[j + q] = scale * s;
    }
  }
  for (; j < r; j++) out[j] = scale * row_dot(x, m + j * d, d);
}

__attribute__((export_name("lm_lora_forward"))) void lm_lora_forward(const float *x, const float *a, const float *b,
                                                                     const float *y, float *out, float *u, int n,
                                                                     int d_in, int d_out, int r, float scale,
                                                                     float *scratch) {
  transpose_small(b, scratch, d_out, r);
  for (int i = 0; i < n; i++) {
    const float *xi = x + i * d_in;
    float *ui = u + i * r;
    dots(xi, a, ui, r, d_in, scale);
    combine_rows(y + i * d_out, ui, scratch, out + i * d_out, r, d_out);
  }
}

__attribute__((export_name("lm_lora_backward"))) void lm_lora_backward(const float *dy, const float *a, const float *b,
                                                                       const float *dx_frozen, float *dx, float *du,
                                                                       int n, int d_in, int d_out, int r, float scale,
                                                                       float *scratch) {
  transpose_small(b, scratch, d_out, r);
  for (int i = 0; i < n; i++) {
    const float *dyi = dy + i * d_out;
    float *dui = du + i * r;
    dots(dyi, scratch, dui, r, d_out, scale);
    combine_rows(dx_frozen ? dx_frozen + i * d_in : 0, dui, a, dx + i * d_in, r, d_in);
  }
}
