/**
 * The compact-base kernels (shared/model/compact-linear.ts) for tfjs-backend-webgpu, in WGSL: the
 * products y = x·Wᵀ and dx = dy·W and the embedding gather, with W read as its packed words and
 * dequantized inside the shader, so the base stays compact on the GPU. Installed by the Node and
 * browser backend pickers right after the webgpu backend starts.
 *
 * Codes are read as 32-bit words and unpacked by hand (formats.ts: f16/bf16 two per word, int8 four,
 * nf4 eight), so no shader-f16 feature is needed: f16 is widened from its bits, bf16 is its bits
 * shifted up 16. A value is fl32(level · scale), one correctly rounded WGSL multiply, so the gather
 * gives exactly dequantizeMatrix's values. The products sum in a different order from the cpu and
 * wasm kernels (and the GPU may fuse multiply-add), so they agree with them within float32 rounding,
 * not bit for bit.
 *
 * A product runs in 32 × 32 output tiles, one workgroup each (16 × 16 invocations, 2 × 2 outputs
 * apiece): for each 16-deep step along the inner dimension the workgroup copies x's (32 × 16) tile
 * and dequantizes W's (16 × 32) into workgroup memory, then every invocation adds its four outputs'
 * products from there. Each W value is decoded once per 32 rows of x.
 *
 * Pipelines are keyed by format, block size and orientation, not by shape (shapes are uniforms), so
 * a model compiles about two products and a gather per format. tfjs-backend-webgpu is imported for types only: in
 * Node it must be imported after navigator.gpu exists (node/backend.ts), never by this module.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend, WebGPUProgram } from '@tensorflow/tfjs-backend-webgpu';
import { COMPACT_GATHER, COMPACT_MATMUL, type CompactAttrs, productShape } from '../shared/model/compact-linear.ts';
import type { ResolvedBaseSpec } from '../shared/quant/formats.ts';
import { NF4_LEVEL_BITS } from '../shared/quant/nf4.ts';

/** Outputs per side of a product's tile. */
const TILE = 32;
/** Inner-dimension values per step: the tiles of x (TILE × DEPTH) and W (DEPTH × TILE) in workgroup memory. */
const DEPTH = 16;
/** Invocations per side of a product's workgroup: each computes 2 × 2 outputs of the tile. */
const GROUP = TILE / 2;
const GATHER_GROUP = 64;

/**
 * The entry point tfjs's _start calls (webgpu_program.ts getMainHeaderString): `fn main(index : i32)`
 * for a flat dispatch layout, as both programs here have. Written out, since the package is not imported.
 */
const mainHeader = (index: string) => `fn main(${index} : i32)`;

/** The uniforms every program here declares (after tfjs's own shapes), in this order. */
const LAYOUT_UNIFORMS = 'rows : i32, cols : i32, rowStride : i32, blocksPerRow : i32,';

type Uniform = { type: 'int32'; data: number[] };

function layoutUniforms(attrs: CompactAttrs): Uniform[] {
  const { rows, cols, rowStride, blocksPerRow } = attrs.layout;
  return [rows, cols, rowStride, blocksPerRow].map((v) => ({ type: 'int32', data: [v] }));
}

/** Whether the format has block scales (an input `scales`); f32/f16/bf16 have none and bind no buffer. */
const hasScales = (spec: ResolvedBaseSpec) => spec.format === 'int8' || spec.format === 'nf4';

/** The shader key part that fixes the decoder: the format and its block size. */
const specKey = (spec: ResolvedBaseSpec) => (hasScales(spec) ? `${spec.format}_${spec.blockSize}` : spec.format);

/**
 * WGSL `fn weightAt(row, col) -> f32`: W[row, col] dequantized from the words in `codes` (and
 * `scales`), exactly as dequantizeMatrix. Element (row, col) is stream index t = row·rowStride + col.
 */
function decoderSource(spec: ResolvedBaseSpec): string {
  const index = 'let t = u32(row) * u32(uniforms.rowStride) + u32(col);';
  const scale = (block: number) => `let scale = scales[row * uniforms.blocksPerRow + col / ${block}];`;
  switch (spec.format) {
    case 'f32':
      return `fn weightAt(row : i32, col : i32) -> f32 {
        ${index}
        return bitcast<f32>(codes[t]);
      }`;
    case 'bf16':
      return `fn weightAt(row : i32, col : i32) -> f32 {
        ${index}
        let word = bitcast<u32>(codes[t >> 1u]);
        return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (t & 1u) == 1u));
      }`;
    case 'f16':
      return `
      // IEEE binary16 bits → float32, exactly (no shader-f16 needed).
      fn halfToFloat(h : u32) -> f32 {
        let sign = (h & 0x8000u) << 16u;
        let exponent = (h >> 10u) & 0x1fu;
        let mantissa = h & 0x3ffu;
        if (exponent == 0u) {
          // zero or subnormal: mantissa · 2^-24, a normal float32 (or 0), exact
          return bitcast<f32>(sign | bitcast<u32>(f32(mantissa) * 5.9604644775390625e-8));
        }
        if (exponent == 31u) {
          return bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u));
        }
        return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
      }
      fn weightAt(row : i32, col : i32) -> f32 {
        ${index}
        let word = bitcast<u32>(codes[t >> 1u]);
        return halfToFloat((word >> (16u * (t & 1u))) & 0xffffu);
      }`;
    case 'int8':
      return `fn weightAt(row : i32, col : i32) -> f32 {
        ${index}
        ${scale(spec.blockSize)}
        let word = bitcast<u32>(codes[t >> 2u]);
        // byte t mod 4 to the top, then an arithmetic shift: the two's complement code
        let code = bitcast<i32>(word << (24u - 8u * (t & 3u))) >> 24u;
        return f32(code) * scale;
      }`;
    case 'nf4': {
      const levels = NF4_LEVEL_BITS.map((bits) => `0x${bits.toString(16)}u`).join(', ');
      return `
      var<private> NF4_LEVEL_BITS : array<u32, 16> = array<u32, 16>(${levels});
      fn weightAt(row : i32, col : i32) -> f32 {
        ${index}
        ${scale(spec.blockSize)}
        let word = bitcast<u32>(codes[t >> 3u]);
        let code = (word >> (4u * ((t & 7u) ^ 1u))) & 0xfu;
        return bitcast<f32>(NF4_LEVEL_BITS[code]) * scale;
      }`;
    }
  }
}

/** out (n, outer) = x·Wᵀ, or x·W when transposed, with W dequantized a tile at a time into workgroup memory. */
class CompactMatMulProgram implements WebGPUProgram {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  // One workgroup per output tile, counted flat (tfjs splits a count over 65535 into y and z).
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [GROUP, GROUP, 1];
  uniforms = LAYOUT_UNIFORMS;

  constructor(
    private readonly spec: ResolvedBaseSpec,
    private readonly transposed: boolean,
    outputShape: [number, number],
  ) {
    this.variableNames = hasScales(spec) ? ['x', 'codes', 'scales'] : ['x', 'codes'];
    this.outputShape = outputShape;
    const [n, outer] = outputShape;
    this.dispatch = [Math.ceil(n / TILE) * Math.ceil(outer / TILE), 1, 1];
    this.shaderKey = `loramesh_compact_matmul_${specKey(spec)}_${transposed ? 'xW' : 'xWt'}`;
  }

  getUserCode(): string {
    // Each step stores x's (TILE × DEPTH) tile as xTile[row][k] and W's as wTile[k][output column].
    // A load index runs along a row of x or W, so neighbouring invocations read neighbouring words.
    const loadW = this.transposed
      ? `let a = flat / ${TILE};
         let b = flat % ${TILE};
         var w = 0.0;
         if (k0 + a < inner && col0 + b < outer) { w = weightAt(k0 + a, col0 + b); }
         wTile[a][b] = w;`
      : `let a = flat / ${DEPTH};
         let b = flat % ${DEPTH};
         var w = 0.0;
         if (col0 + a < outer && k0 + b < inner) { w = weightAt(col0 + a, k0 + b); }
         wTile[b][a] = w;`;
    return `
      ${decoderSource(this.spec)}
      var<workgroup> xTile : array<array<f32, ${DEPTH}>, ${TILE}>;
      var<workgroup> wTile : array<array<f32, ${TILE}>, ${DEPTH}>;

      ${mainHeader('index')} {
        let n = uniforms.outShape[0];
        let outer = uniforms.outShape[1];
        let inner = ${this.transposed ? 'uniforms.rows' : 'uniforms.cols'};
        // A workgroup past the last tile (when the count was split) loads zeros and writes nothing.
        let tile = i32((workgroupId.z * numWorkgroups.y + workgroupId.y) * numWorkgroups.x + workgroupId.x);
        let tilesPerRow = (outer + ${TILE - 1}) / ${TILE};
        let row0 = (tile / tilesPerRow) * ${TILE};
        let col0 = (tile % tilesPerRow) * ${TILE};
        let tx = i32(localId.x);
        let ty = i32(localId.y);
        // outputs (ty, tx), (ty, tx + GROUP), (ty + GROUP, tx), (ty + GROUP, tx + GROUP) of the tile
        var acc00 = 0.0;
        var acc01 = 0.0;
        var acc10 = 0.0;
        var acc11 = 0.0;
        for (var k0 = 0; k0 < inner; k0 = k0 + ${DEPTH}) {
          for (var flat = i32(localIndex); flat < ${TILE * DEPTH}; flat = flat + ${GROUP * GROUP}) {
            let r = flat / ${DEPTH};
            let k = flat % ${DEPTH};
            var v = 0.0;
            if (row0 + r < n && k0 + k < inner) { v = x[(row0 + r) * inner + k0 + k]; }
            xTile[r][k] = v;
            ${loadW}
          }
          workgroupBarrier();
          for (var k = 0; k < ${DEPTH}; k = k + 1) {
            let x0 = xTile[ty][k];
            let x1 = xTile[ty + ${GROUP}][k];
            let w0 = wTile[k][tx];
            let w1 = wTile[k][tx + ${GROUP}];
            acc00 = acc00 + x0 * w0;
            acc01 = acc01 + x0 * w1;
            acc10 = acc10 + x1 * w0;
            acc11 = acc11 + x1 * w1;
          }
          workgroupBarrier();
        }
        let row = row0 + ty;
        let col = col0 + tx;
        if (row < n && col < outer) { setOutputAtCoords(row, col, acc00); }
        if (row < n && col + ${GROUP} < outer) { setOutputAtCoords(row, col + ${GROUP}, acc01); }
        if (row + ${GROUP} < n && col < outer) { setOutputAtCoords(row + ${GROUP}, col, acc10); }
        if (row + ${GROUP} < n && col + ${GROUP} < outer) {
          setOutputAtCoords(row + ${GROUP}, col + ${GROUP}, acc11);
        }
      }
    `;
  }
}

/**
 * out (n, cols) = rows ids of W, dequantized. An id outside [0, rows) gives a row of zeros, as
 * tfjs's own gather on webgpu: the ids stay on the GPU, where nothing can throw (cpu and wasm refuse them).
 */
class CompactGatherProgram implements WebGPUProgram {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [GATHER_GROUP, 1, 1];
  uniforms = LAYOUT_UNIFORMS;
  size = true;

  constructor(
    private readonly spec: ResolvedBaseSpec,
    outputShape: [number, number],
  ) {
    this.variableNames = hasScales(spec) ? ['ids', 'codes', 'scales'] : ['ids', 'codes'];
    this.outputShape = outputShape;
    this.dispatch = [Math.ceil((outputShape[0] * outputShape[1]) / GATHER_GROUP), 1, 1];
    this.shaderKey = `loramesh_compact_gather_${specKey(this.spec)}`;
  }

  getUserCode(): string {
    return `
      ${decoderSource(this.spec)}
      ${mainHeader('index')} {
        if (index < uniforms.size) {
          let i = index / uniforms.cols;
          let col = index - i * uniforms.cols;
          let id = ids[i];
          var value = 0.0;
          if (id >= 0 && id < uniforms.rows) { value = weightAt(id, col); }
          setOutputAtIndex(index, value);
        }
      }
    `;
  }
}

type KernelArgs = { inputs: Record<string, tf.TensorInfo>; backend: WebGPUBackend; attrs: CompactAttrs };

/** Inputs in the programs' variable order: the data, the words, and the scales where the format has them. */
function programInputs(first: tf.TensorInfo, inputs: Record<string, tf.TensorInfo>, attrs: CompactAttrs) {
  return hasScales(attrs.spec) ? [first, inputs.codes, inputs.scales] : [first, inputs.codes];
}

/** Registers COMPACT_MATMUL and COMPACT_GATHER for the webgpu backend (once). */
export function installWebgpuCompactKernels(): void {
  if (tf.getKernel(COMPACT_MATMUL, 'webgpu')) return;
  tf.registerKernel({
    kernelName: COMPACT_MATMUL,
    backendName: 'webgpu',
    kernelFunc: (({ inputs, backend, attrs }: KernelArgs) => {
      const transposed = attrs.transposed ?? false;
      const { x } = inputs;
      const program = new CompactMatMulProgram(attrs.spec, transposed, productShape(x, attrs));
      // x as a flat view of its buffer: the shader indexes it itself, and tfjs keys a pipeline on
      // whether an input's shape equals the output's, which would compile one more for n = 1 or square W.
      const flatX = { ...x, shape: [x.shape[0] * x.shape[1]] };
      return backend.runWebGPUProgram(program, programInputs(flatX, inputs, attrs), 'float32', layoutUniforms(attrs));
    }) as unknown as tf.KernelFunc,
  });
  tf.registerKernel({
    kernelName: COMPACT_GATHER,
    backendName: 'webgpu',
    kernelFunc: (({ inputs, backend, attrs }: KernelArgs) => {
      const program = new CompactGatherProgram(attrs.spec, [inputs.ids.shape[0], attrs.layout.cols]);
      return backend.runWebGPUProgram(
        program,
        programInputs(inputs.ids, inputs, attrs),
        'float32',
        layoutUniforms(attrs),
      );
    }) as unknown as tf.KernelFunc,
  });
}
