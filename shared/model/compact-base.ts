/**
 * Which tensors of a model a compact base format covers, and the conversion: every linear layer's
 * weight and the token embedding (with a tied LM head, the same matrix) become CompactWeights; norms,
 * biases and GPT-2's position embeddings stay float32 tensors. GPT-2's Conv1D weights, stored
 * (d_in, d_out), are transposed first, so every compact matrix is (d_out, d_in) with its blocks along
 * d_in, as bitsandbytes stores an nn.Linear.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../config.ts';
import {
  type BaseFormatSpec,
  describeBaseSpec,
  type PackedMatrix,
  type ResolvedBaseSpec,
  resolveBaseSpec,
} from '../quant/formats.ts';
import { dequantizeMatrix, quantizeMatrix } from '../quant/quantize.ts';
import { embeddingName, linearModulePaths, linearStorage } from './causal-lm.ts';
import { CompactWeight } from './compact-linear.ts';

/** A frozen base as FrozenBase takes it: float32 tensors and compact matrices by canonical name. */
export type BaseWeights = Map<string, tf.Tensor | CompactWeight>;

/** Canonical names of the tensors a compact format stores compactly, with whether each is stored (d_in, d_out). */
export function compactTensorNames(config: ModelConfig): Map<string, { transposed: boolean }> {
  const names = new Map<string, { transposed: boolean }>();
  names.set(embeddingName(config), { transposed: false });
  for (const path of linearModulePaths(config)) {
    const storage = linearStorage(config, path);
    if (!names.has(storage.weight)) names.set(storage.weight, { transposed: storage.transposed });
  }
  return names;
}

/** The stored values of a (d_in, d_out) matrix as (d_out, d_in). */
function transposeValues(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c];
  return out;
}

/**
 * The packed matrix of one checkpoint tensor, or null for one that stays float32. values are the
 * tensor as stored (shape storedShape); a Conv1D weight is transposed to (d_out, d_in) first.
 */
export function packTensor(
  config: ModelConfig,
  name: string,
  values: Float32Array,
  storedShape: readonly number[],
  spec: BaseFormatSpec | ResolvedBaseSpec,
): PackedMatrix | null {
  const how = compactTensorNames(config).get(name);
  if (!how) return null;
  const [a, b] = storedShape;
  const [rows, cols] = how.transposed ? [b, a] : [a, b];
  const matrix = how.transposed ? transposeValues(values, a, b) : values;
  return quantizeMatrix(matrix, rows, cols, spec);
}

/** The compact form of one checkpoint tensor (see packTensor), or null for one that stays float32. */
export function compactTensor(
  config: ModelConfig,
  name: string,
  values: Float32Array,
  storedShape: readonly number[],
  spec: BaseFormatSpec | ResolvedBaseSpec,
): CompactWeight | null {
  const packed = packTensor(config, name, values, storedShape, spec);
  return packed && new CompactWeight(packed, storedShape);
}

/**
 * A float32 base converted: compact matrices replace the tensors they cover (read with dataSync);
 * the float32 ones are kept as they are. The caller still owns (and may dispose) the originals.
 */
export function compactBase(config: ModelConfig, weights: Map<string, tf.Tensor>, spec: BaseFormatSpec): BaseWeights {
  const resolved = resolveBaseSpec(spec);
  const out: BaseWeights = new Map();
  for (const [name, t] of weights) {
    const compact = compactTensor(config, name, t.dataSync() as Float32Array, t.shape, resolved);
    out.set(name, compact ?? t);
  }
  return out;
}

/** baseForKernels' conversions, by the map it was given */
const heldOnce = new WeakMap<BaseWeights, BaseWeights>();

/**
 * The base a FrozenBase runs with on the backend in use. On wasm every float32 matrix a compact format
 * covers (linear weights, the token embedding and with it a tied LM head) becomes a compact `f32`
 * matrix (the same values, held once), whose products run kernels/c/compact-gemm.c in the run's
 * arithmetic variant (shared/arithmetic.ts): 1.3–1.4× XNNPACK's rate per thread at GPT-2's shapes and
 * 2–4× its rate for x·Wᵀ, with none of the three extra float32 layouts XNNPACK's path keeps (W, Wᵀ and
 * their packed copies; shared/model/memory-plan.ts). The float32 tensors it replaces are disposed: the
 * caller hands them over (use the returned map from here on). The same map given again (several
 * in-process workers and the trusted model sharing one loaded base) returns the same converted map,
 * converted once. Other backends, and matrices already compact, are left as they are.
 */
export function baseForKernels(config: ModelConfig, weights: BaseWeights): BaseWeights {
  if (tf.getBackend() !== 'wasm') return weights;
  const converted = heldOnce.get(weights);
  if (converted) return converted;
  const f32 = resolveBaseSpec({ format: 'f32' });
  const out: BaseWeights = new Map();
  heldOnce.set(weights, out);
  for (const [name, w] of weights) {
    const compact =
      w instanceof CompactWeight ? null : compactTensor(config, name, w.dataSync() as Float32Array, w.shape, f32);
    if (compact) (w as tf.Tensor).dispose();
    out.set(name, compact ?? w);
  }
  return out;
}

/**
 * The float32 weights a compact base in `spec` dequantizes to, as tensors in the stored layout: what
 * a float32 reference (autodiff, PyTorch) computes with to match the compact path.
 */
export function dequantizedWeights(
  config: ModelConfig,
  weights: Map<string, tf.Tensor>,
  spec: BaseFormatSpec,
): Map<string, tf.Tensor> {
  const names = compactTensorNames(config);
  const out = new Map<string, tf.Tensor>();
  for (const [name, t] of weights) {
    const how = names.get(name);
    if (!how) {
      out.set(name, t);
      continue;
    }
    const [a, b] = t.shape;
    const [rows, cols] = how.transposed ? [b, a] : [a, b];
    const stored = t.dataSync() as Float32Array;
    const values = how.transposed ? transposeValues(stored, a, b) : stored;
    const dense = dequantizeMatrix(quantizeMatrix(values, rows, cols, spec));
    out.set(name, tf.tensor(how.transposed ? transposeValues(dense, rows, cols) : dense, t.shape));
  }
  return out;
}

/** "nf4/64 (197 matrices, 312.4 MB)" for logs. */
export function describeCompactBase(weights: BaseWeights): string {
  let count = 0;
  let bytes = 0;
  let spec = '';
  for (const w of weights.values())
    if (w instanceof CompactWeight) {
      count++;
      bytes += w.heldBytes;
      spec = describeBaseSpec(w.spec);
    }
  return count === 0 ? 'f32' : `${spec} (${count} matrices, ${(bytes / 1e6).toFixed(1)} MB)`;
}
