/*
 * The coordinator's per-result passes (shared/train/reduce-kernel.ts): the float32 in-order sum of
 * gradients and the float64 sum of squares behind every result's norm and finiteness check; and its
 * optimizer step (lm_adamw, at the end). Built
 * alone by scripts/build-kernels.mjs into shared/train/reduce.wasm.ts; the caller copies chunks of its
 * arrays into the module's memory and back.
 *
 * Both give the bits of their JavaScript forms exactly:
 * - lm_add: each element is one float32 addition, as `acc[i] += g[i]` on Float32Arrays (there the sum
 *   is formed in float64 and rounded to float32, which equals the float32 sum: 53 ≥ 2·24 + 2);
 * - lm_sum_squares: four float64 lanes, lane k summing x[4j + k]² in index order, as the unrolled
 *   JavaScript loop (a float32 squared is exact in float64); the lanes live in `state` between
 *   chunks, so a chunked pass equals one pass as long as every chunk but the last is a multiple of 4.
 */
#include <wasm_simd128.h>

/* acc[i] += g[i] for i < n. */
__attribute__((export_name("lm_add"))) void lm_add(float *restrict acc, const float *restrict g, int n) {
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    wasm_v128_store(acc + i, wasm_f32x4_add(wasm_v128_load(acc + i), wasm_v128_load(g + i)));
    wasm_v128_store(acc + i + 4, wasm_f32x4_add(wasm_v128_load(acc + i + 4), wasm_v128_load(g + i + 4)));
    wasm_v128_store(acc + i + 8, wasm_f32x4_add(wasm_v128_load(acc + i + 8), wasm_v128_load(g + i + 8)));
    wasm_v128_store(acc + i + 12, wasm_f32x4_add(wasm_v128_load(acc + i + 12), wasm_v128_load(g + i + 12)));
  }
  for (; i < n; i++) acc[i] += g[i];
}

/*
 * state[k] += Σ x[4j + k]² over the whole quads of x[0..n), in order; then, when n is not a multiple
 * of 4, state[0] += the squares of the last n mod 4 values (the JavaScript loop's tail).
 */
__attribute__((export_name("lm_sum_squares"))) void lm_sum_squares(const float *x, int n, double *state) {
  v128_t lo = wasm_v128_load(state);     /* lanes 0, 1 */
  v128_t hi = wasm_v128_load(state + 2); /* lanes 2, 3 */
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    v128_t v = wasm_v128_load(x + i);
    v128_t a = wasm_f64x2_promote_low_f32x4(v);
    v128_t b = wasm_f64x2_promote_low_f32x4(wasm_i32x4_shuffle(v, v, 2, 3, 0, 1));
    lo = wasm_f64x2_add(lo, wasm_f64x2_mul(a, a));
    hi = wasm_f64x2_add(hi, wasm_f64x2_mul(b, b));
  }
  wasm_v128_store(state, lo);
  wasm_v128_store(state + 2, hi);
  for (; i < n; i++) state[0] += (double)x[i] * (double)x[i];
}

/*
 * One AdamW step over n parameters in place, the float operations of shared/train/optimizer.ts's adamwStepJs in
 * its order (float64 arithmetic, each moment and parameter rounded to float32 when stored, the moments read back
 * rounded), two at a time:
 *   m ← f32(β1·m + (1−β1)·g);  v ← f32(β2·v + ((1−β2)·g)·g);
 *   p ← f32(p − lr·((m / c1) / (√(v / c2) + eps) + wd·p)).
 * No fused multiply-add (the build passes -ffp-contract=off), so the bits are the JavaScript loop's.
 */
__attribute__((export_name("lm_adamw"))) void lm_adamw(float *restrict p, const float *restrict g, float *restrict m,
                                                        float *restrict v, int n, double beta1, double beta2,
                                                        double c1, double c2, double eps, double lr, double wd) {
  const double ob1 = 1 - beta1, ob2 = 1 - beta2;
  const v128_t B1 = wasm_f64x2_splat(beta1), OB1 = wasm_f64x2_splat(ob1), B2 = wasm_f64x2_splat(beta2),
               OB2 = wasm_f64x2_splat(ob2), C1 = wasm_f64x2_splat(c1), C2 = wasm_f64x2_splat(c2),
               EPS = wasm_f64x2_splat(eps), LR = wasm_f64x2_splat(lr), WD = wasm_f64x2_splat(wd);
  int i = 0;
  for (; i + 2 <= n; i += 2) {
    v128_t gg = wasm_f64x2_promote_low_f32x4(wasm_v128_load64_zero(g + i));
    v128_t mm = wasm_f64x2_promote_low_f32x4(wasm_v128_load64_zero(m + i));
    v128_t vv = wasm_f64x2_promote_low_f32x4(wasm_v128_load64_zero(v + i));
    v128_t pp = wasm_f64x2_promote_low_f32x4(wasm_v128_load64_zero(p + i));
    v128_t m32 = wasm_f32x4_demote_f64x2_zero(wasm_f64x2_add(wasm_f64x2_mul(B1, mm), wasm_f64x2_mul(OB1, gg)));
    v128_t v32 = wasm_f32x4_demote_f64x2_zero(
        wasm_f64x2_add(wasm_f64x2_mul(B2, vv), wasm_f64x2_mul(wasm_f64x2_mul(OB2, gg), gg)));
    wasm_v128_store64_lane(m + i, m32, 0);
    wasm_v128_store64_lane(v + i, v32, 0);
    mm = wasm_f64x2_promote_low_f32x4(m32);
    vv = wasm_f64x2_promote_low_f32x4(v32);
    v128_t update =
        wasm_f64x2_div(wasm_f64x2_div(mm, C1), wasm_f64x2_add(wasm_f64x2_sqrt(wasm_f64x2_div(vv, C2)), EPS));
    pp = wasm_f64x2_sub(pp, wasm_f64x2_mul(LR, wasm_f64x2_add(update, wasm_f64x2_mul(WD, pp))));
    wasm_v128_store64_lane(p + i, wasm_f32x4_demote_f64x2_zero(pp), 0);
  }
  for (; i < n; i++) {
    m[i] = (float)(beta1 * m[i] + ob1 * g[i]);
    v[i] = (float)(beta2 * v[i] + ob2 * g[i] * g[i]);
    const double update = (double)m[i] / c1 / (__builtin_sqrt((double)v[i] / c2) + eps);
    p[i] = (float)(p[i] - lr * (update + wd * p[i]));
  }
}

/* state[0] += x[i]² for i < n, one float64 sum in index order (optimizer.ts globalNorm's order: no lanes). */
__attribute__((export_name("lm_sum_squares_serial"))) void lm_sum_squares_serial(const float *x, int n, double *state) {
  double s = state[0];
  for (int i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
  state[0] = s;
}
