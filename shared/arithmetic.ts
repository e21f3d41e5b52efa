/**
 * The arithmetic variant of a run's WebAssembly kernels (issue 13 / tracker 17). A run's adapter bits
 * depend on its config, data, seed, backend and this variant:
 *  - simd128: WebAssembly SIMD128 multiply then add, two roundings per step (every engine with SIMD);
 *  - relaxed-fma: f32x4.relaxed_madd (relaxed SIMD), a fused multiply-add where the CPU has one. The
 *    spec lets an engine fuse or not, so across volunteers' CPUs its last bits may differ.
 * The run manifest fixes the variant; a worker that cannot run it is refused.
 */
export const ARITHMETIC_VARIANTS = ['simd128', 'relaxed-fma'] as const;
export type ArithmeticVariant = (typeof ARITHMETIC_VARIANTS)[number];
/** today's kernels: existing runs keep their bits */
export const DEFAULT_ARITHMETIC: ArithmeticVariant = 'simd128';
