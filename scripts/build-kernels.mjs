// Builds the C WebAssembly kernels, the committed binaries (base64, so esbuild bundles them into the CLI,
// the offline bundle and the browser worker with no extra file):
// - kernels/c/compact-gemm.c and fused.c, one module, into kernels/compact-gemm.wasm.ts (the wasm backend's);
// - kernels/c/reduce.c into shared/train/reduce.wasm.ts (the coordinator's sum and norms: reduce-kernel.ts).
//
//   node scripts/build-kernels.mjs [--out FILE] [--check]
//
// Needs clang and wasm-ld from LLVM 16 (Debian: apt-get install clang-16 lld-16; or CLANG=… WASM_LD=…).
// KERNEL_CFLAGS adds compiler flags, for experiments (the committed build uses none).
// --check rebuilds into memory and exits 1 if a committed file differs (test/kernels/compact-gemm-build.test.ts).
//
// The modules import tfjs's memory and must own nothing in it: no data, no stack. The linker still
// declares a stack pointer, so the build drops the global, table and custom sections and then checks
// that the module validates without them: any use of the stack would make it invalid.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';

setFlagsFromString('--experimental-wasm-relaxed-simd');

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: { out: { type: 'string' }, check: { type: 'boolean', default: false } },
});
const target = join(root, 'kernels', 'compact-gemm.wasm.ts');
const sources = ['compact-gemm.c', 'fused.c'].map((file) => join(root, 'kernels', 'c', file));
const REDUCE_TARGET = join(root, 'shared', 'train', 'reduce.wasm.ts');
const REDUCE_SOURCES = [join(root, 'kernels', 'c', 'reduce.c')];
const REDUCE_EXPORTS = ['lm_add', 'lm_sum_squares', 'lm_adamw', 'lm_sum_squares_serial'];
const EXPORTS = [
  'lm_lora_forward',
  'lm_lora_backward',
  'lm_swap_axes',
  'lm_masked_softmax',
  'lm_softmax_grad',
  'lm_scratch_floats',
  'lm_product',
  'lm_gemm_scratch_floats',
  'lm_gemm',
  'lm_rms_norm',
  'lm_rms_norm_grad',
  'lm_layer_norm',
  'lm_layer_norm_grad',
  'lm_swiglu',
  'lm_swiglu_grad',
  'lm_gelu',
  'lm_gelu_grad',
  'lm_rope',
  'lm_peak',
];

function tool(envName, candidates) {
  const chosen = process.env[envName];
  if (chosen) return chosen;
  const found = candidates.find((c) => existsSync(c));
  if (!found)
    throw new Error(`${envName}: none of ${candidates.join(', ')} exists (Debian: apt-get install clang-16 lld-16)`);
  return found;
}
const clang = tool('CLANG', ['/usr/bin/clang-16', '/usr/lib/llvm-16/bin/clang']);
const wasmLd = tool('WASM_LD', ['/usr/bin/wasm-ld-16', '/usr/lib/llvm-16/bin/wasm-ld']);
const version = execFileSync(clang, ['--version'], { encoding: 'utf8' }).split('\n')[0];
if (!/version 16\./.test(version)) throw new Error(`expected clang 16 (its output is committed), got: ${version}`);

const readUleb = (bytes, at) => {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[at++];
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if (byte < 0x80) return [value, at];
  }
};

/** The module with only its type, import, function, export and code sections. */
function strip(bytes) {
  const keep = new Set([1, 2, 3, 7, 10]);
  const parts = [bytes.subarray(0, 8)];
  for (let at = 8; at < bytes.length; ) {
    const id = bytes[at];
    const [size, body] = readUleb(bytes, at + 1);
    if (keep.has(id)) parts.push(bytes.subarray(at, body + size));
    at = body + size;
  }
  return Buffer.concat(parts);
}

function build(variant, from = sources, expected = EXPORTS) {
  const dir = mkdtempSync(join(tmpdir(), 'loramesh-kernels-'));
  try {
    const out = join(dir, 'out.wasm');
    const flags = variant === 'relaxed-fma' ? ['-mrelaxed-simd', '-DRELAXED'] : [];
    execFileSync(clang, [
      '--target=wasm32',
      '-O3',
      '-msimd128',
      '-mbulk-memory',
      ...flags,
      ...(process.env.KERNEL_CFLAGS ?? '').split(' ').filter(Boolean),
      '-ffp-contract=off',
      '-nostdlib',
      `-fuse-ld=${wasmLd}`,
      '-Wl,--no-entry',
      '-Wl,--import-memory',
      '-Wl,-z,stack-size=0',
      '-Wl,--initial-memory=65536',
      ...from,
      '-o',
      out,
    ]);
    const module = strip(readFileSync(out));
    if (!WebAssembly.validate(module))
      throw new Error(`${variant}: the module uses its stack or a table (invalid without them); simplify the C`);
    const exports = WebAssembly.Module.exports(new WebAssembly.Module(module)).map((e) => e.name);
    if ([...exports].sort().join() !== [...expected].sort().join())
      throw new Error(`${variant}: unexpected exports ${exports}`);
    return module;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const modules = { simd128: build('simd128'), 'relaxed-fma': build('relaxed-fma') };
const wrap = (text) =>
  text
    .match(/.{1,100}/g)
    .map((line) => `  '${line}' +`)
    .join('\n');
const text = `// Generated by scripts/build-kernels.mjs from kernels/c/compact-gemm.c and fused.c with ${version.trim()}.
// Do not edit: change the C and rebuild (test/kernels/compact-gemm-build.test.ts checks this file is current).
/* biome-ignore-all format: generated */

/** The compact-gemm module per arithmetic variant, base64 (memory imported unshared: see compact-gemm.ts). */
export const COMPACT_GEMM_WASM = {
  simd128:
${wrap(modules.simd128.toString('base64'))}
    '',
  'relaxed-fma':
${wrap(modules['relaxed-fma'].toString('base64'))}
    '',
} as const;
`;
const reduce = build('simd128', REDUCE_SOURCES, REDUCE_EXPORTS);
const reduceText = `// Generated by scripts/build-kernels.mjs from kernels/c/reduce.c with ${version.trim()}.
// Do not edit: change the C and rebuild (test/kernels/compact-gemm-build.test.ts checks this file is current).
/* biome-ignore-all format: generated */

/** The reduce module (simd128, no fused multiply-add), base64: see reduce-kernel.ts. */
export const REDUCE_WASM =
${wrap(reduce.toString('base64'))}
  '';
`;
const out = values.out ?? target;
if (values.check) {
  for (const [file, expected, from] of [
    [target, text, 'kernels/c/compact-gemm.c and fused.c'],
    [REDUCE_TARGET, reduceText, 'kernels/c/reduce.c'],
  ]) {
    const committed = existsSync(file) ? readFileSync(file, 'utf8') : '';
    if (committed !== expected) {
      console.error(`${file} is not what ${from} builds to: run node scripts/build-kernels.mjs`);
      process.exit(1);
    }
  }
  console.log(
    `${target} is current (${modules.simd128.length} + ${modules['relaxed-fma'].length} bytes); ` +
      `${REDUCE_TARGET} is current (${reduce.length} bytes)`,
  );
} else {
  writeFileSync(out, text);
  if (!values.out) writeFileSync(REDUCE_TARGET, reduceText);
  console.log(
    `wrote ${out}: simd128 ${modules.simd128.length} bytes, relaxed-fma ${modules['relaxed-fma'].length} bytes; ` +
      (values.out ? '' : `${REDUCE_TARGET}: ${reduce.length} bytes`),
  );
}
