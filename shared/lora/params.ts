/**
 * Parameter sources for the model: where each linear layer's output comes from. LoRA is a thin
 * wrapper around a frozen linear: h = W x + scaling · B (A dropout(x)), W never gets a gradient.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type LoraConfig, type ModelConfig, loraScaling } from '../config.ts';
import { fail, ErrorCodes } from '../errors.ts';
import {
  type FrozenLinear,
  frozenLinear,
  frozenProducts,
  fusedLoraLinear,
  loraBranch,
  makeFrozenLinear,
  segmentedLoraLinear,
  trainableEmbedding,
  trainableLinear,
} from '../model/linear-ops.ts';
import { type AdapterState, adapterSpec } from './adapter.ts';
import type { BaseWeights } from '../model/compact-base.ts';
import { CompactWeight, compactEmbed, compactLinear, compactProducts } from '../model/compact-linear.ts';
import {
  embeddingName,
  linearModulePaths,
  linearStorage,
  parameterShapes,
  type FrozenProducts,
  type ParamSource,
} from '../model/causal-lm.ts';
import { Rng } from '../rng.ts';

/** Checks that weights has every tensor of the config with the right shape (as stored in the checkpoint). */
export function checkWeights(config: ModelConfig, weights: Map<string, { shape: number[] }>): void {
  for (const [name, shape] of parameterShapes(config)) {
    const t = weights.get(name) ?? fail(ErrorCodes.MODEL, `missing tensor ${name} (expected shape [${shape}])`);
    if (t.shape.join(',') !== shape.join(','))
      fail(ErrorCodes.MODEL, `tensor ${name} has shape [${t.shape}], expected [${shape}] from config.json`);
  }
}

/**
 * Above this many bytes of linear weights, FrozenBase multiplies with W on the left (see
 * FrozenLinear): half the memory and faster for large layers, slower for small ones.
 */
const WEIGHT_ON_THE_LEFT_MIN_BYTES = 64 * 2 ** 20;

/**
 * The frozen base model: every linear layer wrapped for the fast custom gradient, or held compact
 * (CompactWeight: f16/bf16/int8/nf4, or f32 held once) and multiplied by the compact kernels.
 */
export class FrozenBase implements ParamSource {
  readonly linears = new Map<string, FrozenLinear>();
  readonly compact = new Map<string, CompactWeight>();
  /** the LoRA tensors are the only thing differentiated: ops may skip gradients for base tensors */
  readonly frozen = true;
  private readonly biases = new Map<string, tf.Tensor1D>();
  private readonly embedding: tf.Tensor2D | CompactWeight;

  /**
   * plain: use autodiff's own gradients (matMul, LoRA branch) instead of the fast path (the
   * reference in tests). weightOnTheLeft: how the fast path multiplies (see FrozenLinear); by
   * default decided by the size of the model's linear weights (WEIGHT_ON_THE_LEFT_MIN_BYTES).
   */
  constructor(
    readonly config: ModelConfig,
    readonly weights: BaseWeights,
    readonly plain = false,
    weightOnTheLeft?: boolean,
  ) {
    checkWeights(config, weights);
    this.embedding = weights.get(embeddingName(config)) as tf.Tensor2D | CompactWeight;
    const paths = linearModulePaths(config);
    const floatWeight = (path: string) => {
      const w = weights.get(linearStorage(config, path).weight)!;
      return w instanceof CompactWeight ? 0 : 4 * w.size;
    };
    const linearBytes = paths.reduce((n, path) => n + floatWeight(path), 0);
    const onTheLeft = weightOnTheLeft ?? linearBytes > WEIGHT_ON_THE_LEFT_MIN_BYTES;
    for (const path of paths) {
      const storage = linearStorage(config, path);
      const stored = weights.get(storage.weight)!;
      if (stored instanceof CompactWeight) {
        if (plain)
          fail(ErrorCodes.MODEL, `plain autodiff needs float32 weights; ${storage.weight} is ${stored.describe()}`);
        this.compact.set(path, stored);
      }
      // Conv1D weights are stored (d_in, d_out), nn.Linear ones (d_out, d_in); plain autodiff uses them as stored.
      else if (!plain) this.linears.set(path, makeFrozenLinear(stored as tf.Tensor2D, storage.transposed, onTheLeft));
      if (storage.bias) this.biases.set(path, weights.get(storage.bias) as tf.Tensor1D);
    }
  }

  linear(modulePath: string, x: tf.Tensor2D): tf.Tensor2D {
    const compact = this.compact.get(modulePath);
    const y = compact
      ? compactLinear(x, compact)
      : this.plain
        ? this.plainLinear(modulePath, x)
        : frozenLinear(x, this.linears.get(modulePath) ?? fail(ErrorCodes.MODEL, `no linear layer ${modulePath}`));
    const bias = this.biases.get(modulePath);
    return bias ? (tf.add(y, bias) as tf.Tensor2D) : y;
  }

  /** x·Wᵀ through autodiff's own matMul gradient */
  private plainLinear(modulePath: string, x: tf.Tensor2D): tf.Tensor2D {
    const storage = linearStorage(this.config, modulePath);
    const w = (this.weights.get(storage.weight) ??
      fail(ErrorCodes.MODEL, `no linear layer ${modulePath}`)) as tf.Tensor2D;
    return tf.matMul(x, w, false, !storage.transposed);
  }

  /** The products of the linear at modulePath outside autodiff (for the fused head + loss); none for plain. */
  products(modulePath: string): FrozenProducts | undefined {
    if (this.plain || this.biases.has(modulePath)) return undefined;
    const compact = this.compact.get(modulePath);
    if (compact) return compactProducts(compact);
    const layer = this.linears.get(modulePath);
    return layer && frozenProducts(layer);
  }

  embed(ids: tf.Tensor1D): tf.Tensor2D {
    if (this.embedding instanceof CompactWeight) return compactEmbed(ids, this.embedding);
    return tf.gather(this.embedding, ids) as tf.Tensor2D;
  }

  param(name: string): tf.Tensor {
    const t = this.weights.get(name) ?? fail(ErrorCodes.MODEL, `missing tensor ${name}`);
    if (t instanceof CompactWeight) fail(ErrorCodes.MODEL, `${name} is held as ${t.describe()}, not float32`);
    return t;
  }

  dispose(): void {
    for (const l of this.linears.values()) l.owned?.dispose();
  }
}

export interface LoraBranch {
  /** (r, d_in) */
  A: tf.Tensor2D;
  /** (d_out, r) */
  B: tf.Tensor2D;
}

export interface LoraDropout {
  p: number;
  seed: number;
}

/** Groups per-tensor A/B values (in spec order) into one branch per adapted module. */
export function loraBranches(
  spec: { modulePath: string; which: 'A' | 'B' }[],
  tensorAt: (i: number) => tf.Tensor2D,
): Map<string, LoraBranch> {
  const branches = new Map<string, LoraBranch>();
  spec.forEach((t, i) => {
    const entry = branches.get(t.modulePath) ?? ({} as LoraBranch);
    entry[t.which] = tensorAt(i);
    branches.set(t.modulePath, entry);
  });
  return branches;
}

/** The base model with LoRA branches on some modules. */
export function withLora(
  base: FrozenBase,
  branches: Map<string, LoraBranch>,
  scaling: number,
  dropout?: LoraDropout,
  options: { recompute?: boolean } = {},
): ParamSource {
  // Dropout masks differ per module but repeat for the same (seed, order of first calls); a module
  // called again (its block's forward recomputed in the backward pass) draws the same mask.
  let calls = 0;
  const maskSeeds = new Map<string, number>();
  const maskSeed = (modulePath: string, seed: number) => {
    if (!maskSeeds.has(modulePath)) maskSeeds.set(modulePath, seed + 7919 * calls++);
    return maskSeeds.get(modulePath)!;
  };
  return {
    frozen: true,
    head: branches.has('lm_head') ? undefined : base.products('lm_head'),
    recompute: options.recompute,
    blockTensors: (prefix) =>
      [...branches].filter(([path]) => path.startsWith(`${prefix}.`)).flatMap(([, b]) => [b.A, b.B]),
    param: (name) => base.param(name),
    embed: (ids) => base.embed(ids),
    linear(modulePath, x) {
      const branch = branches.get(modulePath);
      if (!branch) return base.linear(modulePath, x);
      const dropped = dropout !== undefined && dropout.p > 0;
      // without dropout (the branch sees x itself), one fused op where the backend has it
      const products = dropped || base.plain ? undefined : base.products(modulePath);
      const fused = products && fusedLoraLinear(x, products, branch.A, branch.B, scaling);
      if (fused) return fused;
      const y = base.linear(modulePath, x);
      let input = x;
      if (dropped) input = tf.mul(x, dropoutMask(x.shape, dropout.p, maskSeed(modulePath, dropout.seed)));
      if (!base.plain) return tf.add(y, loraBranch(input, branch.A, branch.B, scaling));
      const down = tf.matMul(input, tf.transpose(branch.A)); // (N, r)
      const up = tf.matMul(down, tf.transpose(branch.B)); // (N, d_out)
      return tf.add(y, tf.mul(up, scaling));
    },
  };
}

/** One run's part of a multi-adapter pass: its LoRA branches and scaling, over `rows` consecutive rows. */
export interface RunRows {
  rows: number;
  branches: Map<string, LoraBranch>;
  scaling: number;
}

/**
 * The base with several runs' LoRA branches, each on its own rows (the pool's multi-adapter pass): every
 * frozen product runs once over all rows, and each run's rows take its own branch (segmentedLoraLinear, or
 * withLora's unfused path where that is what a run alone takes). No dropout, no LoRA on lm_head and no
 * recomputation here: the caller computes such runs alone. Not for the plain (autodiff reference) base.
 */
export function withSegmentedLora(base: FrozenBase, runs: RunRows[]): ParamSource {
  return {
    frozen: true,
    head: base.products('lm_head'),
    param: (name) => base.param(name),
    embed: (ids) => base.embed(ids),
    linear(modulePath, x) {
      if (!runs.some((r) => r.branches.has(modulePath))) return base.linear(modulePath, x);
      const segments = runs.map(({ rows, branches, scaling }) => {
        const b = branches.get(modulePath);
        return { rows, ...(b ? { branch: { A: b.A, B: b.B, scaling } } : {}) };
      });
      const products = base.products(modulePath);
      const fused = products && segmentedLoraLinear(x, products, segments);
      if (fused) return fused;
      // withLora's unfused path (a layer with a bias, a backend without the kernels): the frozen layer once,
      // then each run's branch added to its own rows
      const sizes = segments.map((seg) => seg.rows);
      const split = (t: tf.Tensor2D) => (runs.length === 1 ? [t] : (tf.split(t, sizes, 0) as tf.Tensor2D[]));
      const [ys, xs] = [split(base.linear(modulePath, x)), split(x)];
      const outs = ys.map((y, j) => {
        const branch = segments[j].branch;
        return branch ? (tf.add(y, loraBranch(xs[j], branch.A, branch.B, branch.scaling)) as tf.Tensor2D) : y;
      });
      return outs.length === 1 ? outs[0] : (tf.concat(outs, 0) as tf.Tensor2D);
    },
  };
}

/**
 * `use` on the base with a trained adapter's branches beside it, unmerged: the adapter served on the
 * very base it was trained on (a compact base stays compact, where merging needs float32 weights).
 * The branch tensors live only for the call.
 */
export function withAdapter<T>(
  base: FrozenBase,
  adapter: AdapterState,
  lora: LoraConfig,
  use: (params: ParamSource) => T,
): T {
  const spec = adapterSpec(base.config, lora);
  const tensors = spec.map((t) => tf.tensor2d(adapter.get(t.name)!, t.shape));
  try {
    return use(
      withLora(
        base,
        loraBranches(spec, (i) => tensors[i]),
        loraScaling(lora),
      ),
    );
  } finally {
    tf.dispose(tensors);
  }
}

/** Inverted-dropout mask from the shared RNG, so every backend and process draws the same mask. */
function dropoutMask(shape: number[], p: number, seed: number): tf.Tensor {
  const rng = new Rng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  const m = new Float32Array(n);
  const keep = 1 / (1 - p);
  for (let i = 0; i < n; i++) m[i] = rng.next() < p ? 0 : keep;
  return tf.tensor(m, shape);
}

/** Every parameter trainable (full pretraining); params are the tensors being differentiated. */
export function trainableParams(config: ModelConfig, params: Map<string, tf.Tensor>): ParamSource {
  const get = (name: string) => params.get(name) ?? fail(ErrorCodes.MODEL, `missing tensor ${name}`);
  return {
    param: get,
    embed: (ids) => trainableEmbedding(ids, get(embeddingName(config)) as tf.Tensor2D),
    linear(modulePath, x) {
      const storage = linearStorage(config, modulePath);
      if (storage.transposed) fail(ErrorCodes.MODEL, `full training of Conv1D layers (${modulePath}) is not supported`);
      const y = trainableLinear(x, get(storage.weight) as tf.Tensor2D);
      return storage.bias ? (tf.add(y, get(storage.bias)) as tf.Tensor2D) : y;
    },
  };
}
