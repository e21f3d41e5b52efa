/**
 * Which arithmetic variant (shared/arithmetic.ts) this JavaScript engine can run, and the one the
 * installed wasm kernels use. relaxed-fma needs WebAssembly relaxed SIMD: on by default in Chrome 114+,
 * behind the V8 flag --experimental-wasm-relaxed-simd in Node 20 (node/backend.ts sets it before any
 * module compiles).
 */
import { ARITHMETIC_VARIANTS, type ArithmeticVariant, DEFAULT_ARITHMETIC } from '../shared/arithmetic.ts';

/** A module whose one function is local.get 0..2, f32x4.relaxed_madd (0xfd 0x105): valid iff relaxed SIMD is on. */
// biome-ignore format: the module's bytes, a section a line
const RELAXED_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  0x01, 0x08, 0x01, 0x60, 0x03, 0x7b, 0x7b, 0x7b, 0x01, 0x7b, // type: (v128, v128, v128) -> v128
  0x03, 0x02, 0x01, 0x00, // one function of type 0
  0x0a, 0x0d, 0x01, 0x0b, 0x00, 0x20, 0x00, 0x20, 0x01, 0x20, 0x02, 0xfd, 0x85, 0x02, 0x0b, // its code
]);

/** The variants this engine can run, in ARITHMETIC_VARIANTS order. */
export function supportedArithmetic(): ArithmeticVariant[] {
  return ARITHMETIC_VARIANTS.filter((v) => v !== 'relaxed-fma' || WebAssembly.validate(RELAXED_PROBE));
}

let selected: ArithmeticVariant = DEFAULT_ARITHMETIC;

/** Makes the wasm kernels use `variant` from now on; throws when this engine cannot run it. */
export function selectArithmetic(variant: ArithmeticVariant): void {
  if (!supportedArithmetic().includes(variant))
    throw new Error(`arithmetic ${variant} needs WebAssembly relaxed SIMD, which this engine lacks`);
  selected = variant;
}

export const selectedArithmetic = (): ArithmeticVariant => selected;
