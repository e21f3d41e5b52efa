/*
 * The compact-base product of shared/quant/compact-matmul.ts in WebAssembly SIMD, tile loops,
 * dequantization and micro-kernel together (built by scripts/build-kernels.mjs into
 * kernels/compact-gemm.wasm.ts; the module imports tfjs's memory and has no data or stack of its own).
 *
 *   lm_product(format, transposed, data, scales, rows, cols, rowStride, blocksPerRow, blockSize,
 *              x, out, n, jBegin, jEnd, scratch)
 *     transposed = 0: out (n, rows) = x (n, cols) · Wᵀ      transposed = 1: out (n, cols) = x (n, rows) · W
 * for the output columns [jBegin, jEnd) only (jBegin a multiple of 8): a caller may split the columns
 * among threads, each with its own scratch of scratchFloats(n) floats. Pointers are byte offsets into
 * the imported memory; W is given by its packed data and block scales (shared/quant/formats.ts).
 *
 * Summation order is compact-matmul.ts's: each output element is a sum over the inner dimension in
 * index order, tiles of PANEL_DEPTH added one after the other into the output, one multiply and one add
 * per term (simd128) or one f32x4.relaxed_madd (relaxed-fma, built with -DRELAXED). The dequantized
 * values equal dequantizeMatrix's bit for bit (int8: code · scale, NF4: level · absmax, each one float32
 * rounding; f16 and bf16 exactly). A row's result never depends on m or on the other rows: every row
 * goes through the same instructions whether it falls in a 4-row block or the rest.
 */
#include <stdint.h>
#include <wasm_simd128.h>

#define INLINE static inline __attribute__((always_inline))
#define PANEL_DEPTH 256
#define PANEL_WIDTH 8

#ifdef RELAXED
#define MADD(acc, s, b) acc = __builtin_wasm_relaxed_madd_f32x4(s, b, acc)
#else
#define MADD(acc, s, b) acc = wasm_f32x4_add(acc, wasm_f32x4_mul(s, b))
#endif

enum { F32 = 0, F16 = 1, BF16 = 2, INT8 = 3, NF4 = 4 };

/* ---------------------------------------------------------------------------------------------- */
/* The micro-kernel: c[i·ldc + j] (+)= Σ_p a[i·rs + p·cs] · b[p·8 + j], i < m, j < 8.               */

#define ROW_DECLARE(r) v128_t c##r##0, c##r##1; const float *a##r = a + (i + r) * rs; float *o##r = c + (i + r) * ldc;
#define ROW_INIT(r)                                                                                  \
  if (accumulate) {                                                                                  \
    c##r##0 = wasm_v128_load(o##r);                                                                  \
    c##r##1 = wasm_v128_load(o##r + 4);                                                              \
  } else {                                                                                           \
    c##r##0 = wasm_f32x4_splat(0.0f);                                                                \
    c##r##1 = c##r##0;                                                                               \
  }
#define ROW_STEP(r)                                                                                  \
  {                                                                                                  \
    v128_t s = wasm_v128_load32_splat(a##r + p * cs);                                                \
    MADD(c##r##0, s, b0);                                                                            \
    MADD(c##r##1, s, b1);                                                                            \
  }
#define ROW_STORE(r)                                                                                 \
  wasm_v128_store(o##r, c##r##0);                                                                    \
  wasm_v128_store(o##r + 4, c##r##1);

/* 4 rows × 8 columns: 8 accumulators, 2 panel vectors and a splat. 5 or 6 rows spill in V8 (x64 gives it 15
   vector registers): measured 23–24 GFLOP/s against 47–52. */
INLINE void micro_kernel_body(const float *a, int rs, int cs, const float *b, float *c, int ldc, int m, int k,
                              int accumulate) {
  int i = 0;
  for (; i + 4 <= m; i += 4) {
    ROW_DECLARE(0) ROW_DECLARE(1) ROW_DECLARE(2) ROW_DECLARE(3)
    ROW_INIT(0) ROW_INIT(1) ROW_INIT(2) ROW_INIT(3)
    const float *bp = b;
    for (int p = 0; p < k; p++, bp += PANEL_WIDTH) {
      v128_t b0 = wasm_v128_load(bp), b1 = wasm_v128_load(bp + 4);
      ROW_STEP(0) ROW_STEP(1) ROW_STEP(2) ROW_STEP(3)
    }
    ROW_STORE(0) ROW_STORE(1) ROW_STORE(2) ROW_STORE(3)
  }
  for (; i < m; i++) {
    ROW_DECLARE(0)
    ROW_INIT(0)
    const float *bp = b;
    for (int p = 0; p < k; p++, bp += PANEL_WIDTH) {
      v128_t b0 = wasm_v128_load(bp), b1 = wasm_v128_load(bp + 4);
      ROW_STEP(0)
    }
    ROW_STORE(0)
  }
}

/* A's rows contiguous (cs = 1, the compact products and most others), or any strides (A transposed). */
static void micro_kernel(const float *a, int rs, const float *b, float *c, int ldc, int m, int k, int accumulate) {
  micro_kernel_body(a, rs, 1, b, c, ldc, m, k, accumulate);
}
static void micro_kernel_strided(const float *a, int rs, int cs, const float *b, float *c, int ldc, int m, int k,
                                 int accumulate) {
  micro_kernel_body(a, rs, cs, b, c, ldc, m, k, accumulate);
}

/* ---------------------------------------------------------------------------------------------- */
/* Decoding: W[row, col + e] for e < count into dst[e], contiguous.                                  */

typedef struct {
  int format;
  const uint8_t *data;
  const float *scales;
  int cols, row_stride, blocks_per_row, block_size;
  /* NF4 levels as four byte planes: byte b of level i is plane b, lane i */
  v128_t plane0, plane1, plane2, plane3;
} Matrix;

INLINE v128_t f16x4_to_f32(v128_t h /* u32 lanes holding u16 */) {
  v128_t sign = wasm_i32x4_shl(wasm_v128_and(h, wasm_i32x4_splat(0x8000)), 16);
  v128_t em = wasm_v128_and(h, wasm_i32x4_splat(0x7fff));
  v128_t shifted = wasm_i32x4_shl(em, 13);
  /* normals and subnormals: the f16 bits shifted into place, then × 2^112 (exact) */
  v128_t finite = wasm_f32x4_mul(shifted, wasm_f32x4_splat(0x1p112f));
  v128_t special = wasm_v128_or(shifted, wasm_i32x4_splat(0x7f800000)); /* Inf and NaN, payload kept */
  v128_t is_special = wasm_i32x4_ge(em, wasm_i32x4_splat(0x7c00));
  return wasm_v128_or(sign, wasm_v128_bitselect(special, finite, is_special));
}

INLINE float f16_to_f32(uint32_t h) {
  return wasm_f32x4_extract_lane(f16x4_to_f32(wasm_i32x4_splat((int32_t)h)), 0);
}


INLINE float nf4_level(const Matrix *w, int code) {
  v128_t idx = wasm_i32x4_splat(code * 0x01010101);
  v128_t b0 = wasm_i8x16_swizzle(w->plane0, idx), b1 = wasm_i8x16_swizzle(w->plane1, idx);
  v128_t b2 = wasm_i8x16_swizzle(w->plane2, idx), b3 = wasm_i8x16_swizzle(w->plane3, idx);
  v128_t lo = wasm_i8x16_shuffle(b0, b1, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  v128_t hi = wasm_i8x16_shuffle(b2, b3, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  v128_t v = wasm_i8x16_shuffle(lo, hi, 0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
  return wasm_f32x4_extract_lane(v, 0);
}

/* 16 NF4 levels for the 16 codes in the bytes of idx, times scale: four vectors of 4 floats. */
#define NF4_LOOKUP16(w, idx, scale, out0, out1, out2, out3)                                           \
  {                                                                                                  \
    v128_t b0 = wasm_i8x16_swizzle((w)->plane0, idx), b1 = wasm_i8x16_swizzle((w)->plane1, idx);    \
    v128_t b2 = wasm_i8x16_swizzle((w)->plane2, idx), b3 = wasm_i8x16_swizzle((w)->plane3, idx);    \
    v128_t lo0 = wasm_i8x16_shuffle(b0, b1, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);   \
    v128_t hi0 = wasm_i8x16_shuffle(b2, b3, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);   \
    v128_t lo1 = wasm_i8x16_shuffle(b0, b1, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, \
                                    31);                                                             \
    v128_t hi1 = wasm_i8x16_shuffle(b2, b3, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, \
                                    31);                                                             \
    out0 = wasm_f32x4_mul(                                                                           \
        wasm_i8x16_shuffle(lo0, hi0, 0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23), scale);     \
    out1 = wasm_f32x4_mul(                                                                           \
        wasm_i8x16_shuffle(lo0, hi0, 8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31), scale); \
    out2 = wasm_f32x4_mul(                                                                           \
        wasm_i8x16_shuffle(lo1, hi1, 0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23), scale);     \
    out3 = wasm_f32x4_mul(                                                                           \
        wasm_i8x16_shuffle(lo1, hi1, 8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31), scale); \
  }

/*
 * dst[e] = W[row, col + e], e < count. For int8 and NF4 the run lies within one scale block, whose
 * scale the caller passes (unused by the other formats).
 */
INLINE void decode_run(const Matrix *w, int row, int col, int count, float scale, float *dst) {
  int e = 0;
  switch (w->format) {
  case F32: {
    const float *src = (const float *)w->data + row * w->cols + col;
    for (; e + 4 <= count; e += 4) wasm_v128_store(dst + e, wasm_v128_load(src + e));
    for (; e < count; e++) dst[e] = src[e];
    return;
  }
  case BF16: {
    const uint16_t *src = (const uint16_t *)w->data + row * w->cols + col;
    for (; e + 4 <= count; e += 4) wasm_v128_store(dst + e, wasm_i32x4_shl(wasm_u32x4_load16x4(src + e), 16));
    for (; e < count; e++) ((uint32_t *)dst)[e] = (uint32_t)src[e] << 16;
    return;
  }
  case F16: {
    const uint16_t *src = (const uint16_t *)w->data + row * w->cols + col;
    for (; e + 4 <= count; e += 4) wasm_v128_store(dst + e, f16x4_to_f32(wasm_u32x4_load16x4(src + e)));
    for (; e < count; e++) dst[e] = f16_to_f32(src[e]);
    return;
  }
  case INT8: {
    const int8_t *src = (const int8_t *)w->data + row * w->row_stride + col;
    v128_t s = wasm_f32x4_splat(scale);
    for (; e + 8 <= count; e += 8) {
      v128_t wide = wasm_i16x8_load8x8(src + e);
      wasm_v128_store(dst + e, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(wasm_i32x4_extend_low_i16x8(wide)), s));
      wasm_v128_store(dst + e + 4, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(wasm_i32x4_extend_high_i16x8(wide)), s));
    }
    for (; e < count; e++) dst[e] = (float)src[e] * scale;
    return;
  }
  case NF4: {
    int t = row * w->row_stride + col; /* nibble index; the high nibble of a byte comes first */
    v128_t s = wasm_f32x4_splat(scale);
    if (t & 1) {
      dst[e++] = nf4_level(w, w->data[t >> 1] & 0x0f) * scale;
      t++;
    }
    const uint8_t *src = w->data + (t >> 1);
    v128_t low_nibbles = wasm_i8x16_splat(0x0f);
    for (; e + 16 <= count; e += 16, src += 8) {
      v128_t bytes = wasm_v128_load64_zero(src);
      v128_t idx = wasm_i8x16_shuffle(wasm_u8x16_shr(bytes, 4), wasm_v128_and(bytes, low_nibbles), 0, 16, 1, 17, 2,
                                      18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      v128_t v0, v1, v2, v3;
      NF4_LOOKUP16(w, idx, s, v0, v1, v2, v3)
      wasm_v128_store(dst + e, v0);
      wasm_v128_store(dst + e + 4, v1);
      wasm_v128_store(dst + e + 8, v2);
      wasm_v128_store(dst + e + 12, v3);
    }
    if (e + 8 <= count) { /* a panel row: 8 codes in 4 bytes */
      v128_t bytes = wasm_v128_load32_zero(src);
      v128_t idx = wasm_i8x16_shuffle(wasm_u8x16_shr(bytes, 4), wasm_v128_and(bytes, low_nibbles), 0, 16, 1, 17, 2,
                                      18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      v128_t v0, v1, v2, v3;
      NF4_LOOKUP16(w, idx, s, v0, v1, v2, v3)
      (void)v2;
      (void)v3;
      wasm_v128_store(dst + e, v0);
      wasm_v128_store(dst + e + 4, v1);
      e += 8;
      src += 4;
    }
    for (int h = 0; e < count; e++, h++) {
      uint8_t byte = src[h >> 1];
      dst[e] = nf4_level(w, h & 1 ? byte & 0x0f : byte >> 4) * scale;
    }
    return;
  }
  }
}

INLINE int blocked(const Matrix *w) { return w->format == INT8 || w->format == NF4; }

/* dst[e] = W[row, col + e] for e < count, split at the scale blocks. */
INLINE void decode_row(const Matrix *w, int row, int col, int count, float *dst) {
  if (!blocked(w)) {
    decode_run(w, row, col, count, 0.0f, dst);
    return;
  }
  int end = col + count;
  for (int block = col / w->block_size; col < end; block++) {
    int stop = (block + 1) * w->block_size;
    if (stop > end) stop = end;
    decode_run(w, row, col, stop - col, w->scales[row * w->blocks_per_row + block], dst);
    dst += stop - col;
    col = stop;
  }
}

/* ---------------------------------------------------------------------------------------------- */
/* Packing: panel[p·8 + j] = (W or Wᵀ)[k0 + p, j0 + j], zero for j ≥ width.                         */

/* panel[p·8 + j] = src[j·ld + p] for p < depth, j < 8: two 4 × 4 transposes per 4 values of p. */
INLINE void transpose_rows(const float *src, int ld, float *panel, int depth) {
  int p = 0;
  for (; p + 4 <= depth; p += 4) {
    for (int half = 0; half < 2; half++) {
      const float *s = src + half * 4 * ld + p;
      v128_t r0 = wasm_v128_load(s), r1 = wasm_v128_load(s + ld), r2 = wasm_v128_load(s + 2 * ld),
             r3 = wasm_v128_load(s + 3 * ld);
      v128_t t0 = wasm_i32x4_shuffle(r0, r1, 0, 4, 1, 5), t1 = wasm_i32x4_shuffle(r0, r1, 2, 6, 3, 7);
      v128_t t2 = wasm_i32x4_shuffle(r2, r3, 0, 4, 1, 5), t3 = wasm_i32x4_shuffle(r2, r3, 2, 6, 3, 7);
      float *d = panel + p * PANEL_WIDTH + half * 4;
      wasm_v128_store(d, wasm_i32x4_shuffle(t0, t2, 0, 1, 4, 5));
      wasm_v128_store(d + PANEL_WIDTH, wasm_i32x4_shuffle(t0, t2, 2, 3, 6, 7));
      wasm_v128_store(d + 2 * PANEL_WIDTH, wasm_i32x4_shuffle(t1, t3, 0, 1, 4, 5));
      wasm_v128_store(d + 3 * PANEL_WIDTH, wasm_i32x4_shuffle(t1, t3, 2, 3, 6, 7));
    }
  }
  for (; p < depth; p++)
    for (int j = 0; j < PANEL_WIDTH; j++) panel[p * PANEL_WIDTH + j] = src[j * ld + p];
}

/*
 * The (depth × 8) panel of the product at (k0, j0), width ≤ 8 real columns, in `panel`. Always a copy,
 * even of a float32 W read along its rows: its rows are often a multiple of 4 KiB apart, and reading 8
 * floats from each of 256 such rows would keep evicting itself from L1.
 */
INLINE void pack_panel(const Matrix *w, int transposed, int k0, int depth, int j0, int width, float *panel,
                       float *rows) {
  if (transposed) { /* the panel's row p is W[k0 + p, j0 .. j0 + width) */
    int block = blocked(w) ? j0 / w->block_size : 0;
    int one_block = !blocked(w) || (j0 + width - 1) / w->block_size == block;
    for (int p = 0; p < depth; p++) {
      float *d = panel + p * PANEL_WIDTH;
      if (one_block) {
        float scale = blocked(w) ? w->scales[(k0 + p) * w->blocks_per_row + block] : 0.0f;
        decode_run(w, k0 + p, j0, width, scale, d);
      } else {
        decode_row(w, k0 + p, j0, width, d);
      }
      for (int j = width; j < PANEL_WIDTH; j++) d[j] = 0.0f;
    }
    return;
  }
  /* the panel's column j is W[j0 + j, k0 .. k0 + depth) */
  if (w->format == F32 && width == PANEL_WIDTH) {
    transpose_rows((const float *)w->data + j0 * w->cols + k0, w->cols, panel, depth);
    return;
  }
  for (int j = 0; j < PANEL_WIDTH; j++) {
    float *d = rows + j * PANEL_DEPTH;
    if (j < width) decode_row(w, j0 + j, k0, depth, d);
    else
      for (int p = 0; p < depth; p++) d[p] = 0.0f;
  }
  transpose_rows(rows, PANEL_DEPTH, panel, depth);
}

/* ---------------------------------------------------------------------------------------------- */

/* Floats of scratch one call needs: the panel, the rows to transpose, the tail block, NF4's levels. */
__attribute__((export_name("lm_scratch_floats"))) int lm_scratch_floats(int n) {
  return PANEL_DEPTH * PANEL_WIDTH * 2 + n * PANEL_WIDTH + 16;
}

/*
 * The product for output columns [j_begin, j_end). scratch holds lm_scratch_floats(n) floats; for NF4
 * its last 16 floats must hold the 16 levels (the caller writes them: the module has no data).
 */
__attribute__((export_name("lm_product"))) void lm_product(int format, int transposed, const uint8_t *data,
                                                           const float *scales, int rows, int cols, int row_stride,
                                                           int blocks_per_row, int block_size, const float *x,
                                                           float *out, int n, int j_begin, int j_end,
                                                           float *scratch) {
  if (n <= 0 || j_end <= j_begin) return;
  float *panel = scratch;
  float *rows_buffer = panel + PANEL_DEPTH * PANEL_WIDTH;
  float *tail = rows_buffer + PANEL_DEPTH * PANEL_WIDTH;
  const float *levels = tail + n * PANEL_WIDTH;
  Matrix w = {format, data, scales, cols, row_stride, blocks_per_row, block_size};
  if (format == NF4) {
    v128_t v0 = wasm_v128_load(levels), v1 = wasm_v128_load(levels + 4), v2 = wasm_v128_load(levels + 8),
           v3 = wasm_v128_load(levels + 12);
    v128_t e01 = wasm_i8x16_shuffle(v0, v1, 0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    v128_t e23 = wasm_i8x16_shuffle(v2, v3, 0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    v128_t o01 = wasm_i8x16_shuffle(v0, v1, 2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
    v128_t o23 = wasm_i8x16_shuffle(v2, v3, 2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
    w.plane0 = wasm_i8x16_shuffle(e01, e23, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    w.plane1 = wasm_i8x16_shuffle(e01, e23, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    w.plane2 = wasm_i8x16_shuffle(o01, o23, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    w.plane3 = wasm_i8x16_shuffle(o01, o23, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  }
  int inner = transposed ? rows : cols;
  int outer = transposed ? cols : rows;
  for (int k0 = 0; k0 < inner; k0 += PANEL_DEPTH) {
    int depth = inner - k0 < PANEL_DEPTH ? inner - k0 : PANEL_DEPTH;
    int accumulate = k0 > 0;
    for (int j0 = j_begin; j0 < j_end; j0 += PANEL_WIDTH) {
      int width = j_end - j0 < PANEL_WIDTH ? j_end - j0 : PANEL_WIDTH;
      pack_panel(&w, transposed, k0, depth, j0, width, panel, rows_buffer);
      if (width == PANEL_WIDTH) {
        micro_kernel(x + k0, inner, panel, out + j0, outer, n, depth, accumulate);
        continue;
      }
      /* the last, narrower panel: through the tail block, as the kernel writes 8 columns */
      if (accumulate)
        for (int i = 0; i < n; i++)
          for (int j = 0; j < width; j++) tail[i * PANEL_WIDTH + j] = out[i * outer + j0 + j];
      micro_kernel(x + k0, inner, panel, tail, PANEL_WIDTH, n, depth, accumulate);
      for (int i = 0; i < n; i++)
        for (int j = 0; j < width; j++) out[i * outer + j0 + j] = tail[i * PANEL_WIDTH + j];
    }
  }
}

/* ---------------------------------------------------------------------------------------------- */
/* Float32 products of tensors (tfjs's BatchMatMul where XNNPACK does not take it).                  */

/* Floats of scratch lm_gemm needs for m rows: a panel and the tail block. */
__attribute__((export_name("lm_gemm_scratch_floats"))) int lm_gemm_scratch_floats(int m) {
  return PANEL_DEPTH * PANEL_WIDTH + m * PANEL_WIDTH;
}

/*
 * c[t·c_bs + i·c_rs + j·c_cs] = Σ_p a[t·a_bs + i·a_rs + p·a_cs] · b[t·b_bs + p·b_rs + j·b_cs], for
 * t < batch, i < m, j < n, p < k (all ≥ 1). Strides count floats (a zero batch stride broadcasts;
 * a_cs ≠ 1 reads A transposed, b_cs ≠ 1 B, c_cs ≠ 1 writes C transposed). Same order and panels as
 * lm_product: each element a sum over p in order.
 */
__attribute__((export_name("lm_gemm"))) void lm_gemm(const float *a, int a_rs, int a_cs, int a_bs, const float *b,
                                                     int b_rs, int b_cs, int b_bs, float *c, int c_rs, int c_cs,
                                                     int c_bs, int batch, int m, int k, int n, float *scratch) {
  float *panel = scratch;
  float *tail = panel + PANEL_DEPTH * PANEL_WIDTH;
  for (int t = 0; t < batch; t++) {
    const float *at = a + t * a_bs, *bt = b + t * b_bs;
    float *ct = c + t * c_bs;
    for (int k0 = 0; k0 < k; k0 += PANEL_DEPTH) {
      int depth = k - k0 < PANEL_DEPTH ? k - k0 : PANEL_DEPTH;
      int accumulate = k0 > 0;
      for (int j0 = 0; j0 < n; j0 += PANEL_WIDTH) {
        int width = n - j0 < PANEL_WIDTH ? n - j0 : PANEL_WIDTH;
        const float *src = bt + k0 * b_rs + j0 * b_cs;
        if (b_rs == 1 && width == PANEL_WIDTH) {
          transpose_rows(src, b_cs, panel, depth);
        } else {
          for (int p = 0; p < depth; p++) {
            float *d = panel + p * PANEL_WIDTH;
            const float *row = src + p * b_rs;
            if (b_cs == 1 && width == PANEL_WIDTH) {
              wasm_v128_store(d, wasm_v128_load(row));
              wasm_v128_store(d + 4, wasm_v128_load(row + 4));
              continue;
            }
            for (int j = 0; j < width; j++) d[j] = row[j * b_cs];
            for (int j = width; j < PANEL_WIDTH; j++) d[j] = 0.0f;
          }
        }
        const float *x = at + k0 * a_cs;
        /* whole panels of a row-major C in place; others through the tail block */
        int direct = width == PANEL_WIDTH && c_cs == 1;
        float *out = direct ? ct + j0 * c_cs : tail;
        int ldc = direct ? c_rs : PANEL_WIDTH;
        if (!direct && accumulate)
          for (int i = 0; i < m; i++)
            for (int j = 0; j < width; j++) tail[i * PANEL_WIDTH + j] = ct[i * c_rs + (j0 + j) * c_cs];
        if (a_cs == 1) micro_kernel(x, a_rs, panel, out, ldc, m, depth, accumulate);
        else micro_kernel_strided(x, a_rs, a_cs, panel, out, ldc, m, depth, accumulate);
        if (!direct)
          for (int i = 0; i < m; i++)
            for (int j = 0; j < width; j++) ct[i * c_rs + (j0 + j) * c_cs] = tail[i * PANEL_WIDTH + j];
      }
    }
  }
}

/*
 * The CPU's peak for this variant's multiply-add, registers only: 12 independent 4-lane accumulators,
 * `iterations` rounds of 12 four-lane multiply-adds (96 flops a round). The result keeps the
 * work from being optimized away. For the bench's "largest matmul alone" column (bench/compute-measure.ts).
 */
__attribute__((export_name("lm_peak"))) float lm_peak(int iterations, float seed) {
  v128_t s = wasm_f32x4_splat(seed), b = wasm_f32x4_splat(0.999f);
  v128_t c0 = s, c1 = s, c2 = s, c3 = s, c4 = s, c5 = s, c6 = s, c7 = s, c8 = s, c9 = s, c10 = s, c11 = s;
  for (int i = 0; i < iterations; i++) {
    MADD(c0, s, b); MADD(c1, s, b); MADD(c2, s, b); MADD(c3, s, b); MADD(c4, s, b); MADD(c5, s, b);
    MADD(c6, s, b); MADD(c7, s, b); MADD(c8, s, b); MADD(c9, s, b); MADD(c10, s, b); MADD(c11, s, b);
  }
  v128_t t = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_add(c0, c1), wasm_f32x4_add(c2, c3)),
                            wasm_f32x4_add(wasm_f32x4_add(c4, c5), wasm_f32x4_add(c6, c7)));
  t = wasm_f32x4_add(t, wasm_f32x4_add(wasm_f32x4_add(c8, c9), wasm_f32x4_add(c10, c11)));
  return wasm_f32x4_extract_lane(t, 0);
}
