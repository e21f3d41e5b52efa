/**
 * The arithmetic variant of a run's WebAssembly kernels (issue 13 / tracker 17). A run's adapter bits
 * depend on its config, data, seed, backend and this variant:
 *  - simd128: WebAssembly SIMD128 multiply then add, two roundings per step (every engine with SIMD);
 *  - relaxed-fma: f32x4.relaxed_madd (relaxed SIMD), a fused multiply-add where the CPU has one. The
 *    spec lets an engine fuse or not, so across volunteers' CPUs its last bits may differ.
 * The run manifest fixes the variant; a worker that cannot run it is refused.
 */
import { ErrorCodes, fail } from './errors.ts';

export const ARITHMETIC_VARIANTS = ['simd128', 'relaxed-fma'] as const;
export type ArithmeticVariant = (typeof ARITHMETIC_VARIANTS)[number];
/** today's kernels: existing runs keep their bits */
export const DEFAULT_ARITHMETIC: ArithmeticVariant = 'simd128';

/**
 * What a process's wasm kernels offer (kernels/arithmetic.ts behind it on both platforms; tests fake it): the
 * variants this engine can run, and making the kernels use one from now on.
 */
export interface ArithmeticKernels {
  supported(): readonly ArithmeticVariant[];
  select(variant: ArithmeticVariant): void;
}

/**
 * Makes `kernels` compute with the run's `variant`, or fails with LM_ERR_ARITHMETIC naming the variant and what
 * this engine offers: never a silent fallback to another variant, whose bits would differ. `who` says whose
 * engine it is (e.g. "the coordinator"), for the message.
 */
export function useArithmetic(variant: ArithmeticVariant, kernels: ArithmeticKernels, who: string): void {
  const supported = kernels.supported();
  if (!supported.includes(variant))
    fail(
      ErrorCodes.ARITHMETIC,
      `the run computes with arithmetic ${variant}; ${who} supports ${supported.join(', ') || 'none'} ` +
        '(relaxed-fma needs WebAssembly relaxed SIMD)',
    );
  kernels.select(variant);
}
