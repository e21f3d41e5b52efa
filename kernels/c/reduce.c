/*
 * The coordinator's per-result passes (shared/train/reduce-kernel.ts): the float32 in-order sum of
 * gradients and the float64 sum of squares behind every result's norm and finiteness check. Built
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
