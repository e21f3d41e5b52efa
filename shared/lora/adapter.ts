/**
 * The LoRA adapter as data: which tensors exist (the spec), their initial values, and merge /
 * unmerge into base weights. One naming rule decides what trains and what goes on the wire: a
 * tensor is `<module path>.lora_A` (r × d_in) or `<module path>.lora_B` (d_out × r).
 */
import * as tf from '@tensorflow/tfjs-core';
import { type LoraConfig, type ModelConfig, loraScaling } from '../config.ts';
import { fail, ErrorCodes } from '../errors.ts';
import { linearModulePaths, linearShape, linearStorage, moduleKind } from '../model/causal-lm.ts';
import { Rng } from '../rng.ts';

export interface AdapterTensorSpec {
  name: string;
  modulePath: string;
  which: 'A' | 'B';
  /** A: (r, d_in); B: (d_out, r) */
  shape: [number, number];
}

/** Adapter tensors by name, in spec order. Float32Array so it moves over the wire unchanged. */
export type AdapterState = Map<string, Float32Array>;

export const loraName = (modulePath: string, which: 'A' | 'B') => `${modulePath}.lora_${which}`;

/** Module paths the LoRA wraps; a target that matches no module of this architecture is an error. */
export function adaptedModules(config: ModelConfig, lora: LoraConfig): string[] {
  const paths = linearModulePaths(config).filter((p) => p !== 'lm_head');
  for (const target of lora.targetModules) {
    if (!paths.some((p) => moduleKind(p) === target)) {
      const kinds = [...new Set(paths.map(moduleKind))].join(', ');
      fail(
        ErrorCodes.CONFIG,
        `lora.targetModules has ${target}, which a ${config.model_type} model does not have; expected some of ${kinds}`,
      );
    }
  }
  return paths.filter((p) => (lora.targetModules as string[]).includes(moduleKind(p)));
}

export function adapterSpec(config: ModelConfig, lora: LoraConfig): AdapterTensorSpec[] {
  const spec: AdapterTensorSpec[] = [];
  for (const modulePath of adaptedModules(config, lora)) {
    const [dOut, dIn] = linearShape(config, modulePath);
    spec.push({ name: loraName(modulePath, 'A'), modulePath, which: 'A', shape: [lora.r, dIn] });
    spec.push({ name: loraName(modulePath, 'B'), modulePath, which: 'B', shape: [dOut, lora.r] });
  }
  return spec;
}

/** Number of values in an adapter: the length of every flat float payload on the wire. */
export function adapterParameterCount(spec: readonly { shape: readonly [number, number] }[]): number {
  return spec.reduce((n, t) => n + t.shape[0] * t.shape[1], 0);
}

/**
 * B = 0 so training starts exactly at the base model. A is Kaiming-uniform with a = √5 as PEFT
 * and nn.Linear do: bound = gain·√(3 / fan_in) with gain = √(2 / (1 + a²)), i.e. 1/√d_in; or
 * Gaussian N(0, (1/r)²) as PEFT's "gaussian" option.
 */
export function initAdapter(spec: AdapterTensorSpec[], lora: LoraConfig, seed: number): AdapterState {
  const rng = new Rng(seed);
  const state: AdapterState = new Map();
  for (const t of spec) {
    const data = new Float32Array(t.shape[0] * t.shape[1]);
    if (t.which === 'A') {
      const bound = 1 / Math.sqrt(t.shape[1]);
      for (let i = 0; i < data.length; i++)
        data[i] = lora.init === 'kaiming' ? rng.uniform(-bound, bound) : rng.normal() / lora.r;
    }
    state.set(t.name, data);
  }
  return state;
}

/** A deep copy: the same names in the same order, each tensor a new Float32Array. */
export function cloneAdapter(state: ReadonlyMap<string, Float32Array>): AdapterState {
  return new Map([...state].map(([k, v]) => [k, v.slice()]));
}

/** The largest |a − b| over all tensors of two adapters with the same names. */
export function maxAbsDiff(a: AdapterState, b: AdapterState): number {
  let max = 0;
  for (const [name, x] of a) {
    const y = b.get(name);
    if (!y || y.length !== x.length) return Infinity;
    for (let i = 0; i < x.length; i++) max = Math.max(max, Math.abs(x[i] - y[i]));
  }
  return max;
}

/**
 * W' = W ± scaling·B·A for every adapted module: merge for inference (sign +1) and its exact
 * inverse (sign −1). Returns new weight tensors; refuses a non-finite result (PEFT's safe_merge).
 */
export function mergeAdapter(
  config: ModelConfig,
  weights: Map<string, tf.Tensor>,
  spec: AdapterTensorSpec[],
  state: AdapterState,
  lora: LoraConfig,
  sign: 1 | -1 = 1,
): Map<string, tf.Tensor> {
  const merged = new Map(weights);
  const scaling = sign * loraScaling(lora);
  for (const t of spec) {
    if (t.which !== 'A') continue;
    const bSpec = spec.find((s) => s.modulePath === t.modulePath && s.which === 'B')!;
    const { weight: key, transposed } = linearStorage(config, t.modulePath);
    const w = weights.get(key) ?? fail(ErrorCodes.MODEL, `cannot merge: base weight ${key} is missing`);
    const updated = tf.tidy(() => {
      const a = tf.tensor2d(state.get(t.name)!, t.shape);
      const b = tf.tensor2d(state.get(bSpec.name)!, bSpec.shape);
      const delta = tf.mul(tf.matMul(b, a), scaling); // (d_out, d_in)
      return tf.add(w, transposed ? tf.transpose(delta) : delta); // stored layout
    });
    if (!Number.isFinite(tf.tidy(() => tf.sum(updated).dataSync()[0]))) {
      updated.dispose();
      fail(ErrorCodes.NON_FINITE, `merging ${t.modulePath} gives non-finite weights; the adapter is broken`);
    }
    merged.set(key, updated);
  }
  return merged;
}

/** PEFT's fan_in_fan_out: true when the adapted base weights are stored (d_in, d_out) (GPT-2 Conv1D). */
export function fanInFanOut(config: ModelConfig, lora: LoraConfig): boolean {
  return adaptedModules(config, lora).some((path) => linearStorage(config, path).transposed);
}
