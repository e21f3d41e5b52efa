/**
 * The workloads of the compute bench: a model, its weights, a LoRA adapter and one micro-batch,
 * and the analytic FLOP count of one LoRA training step on them. Used by bench/compute.ts and
 * bench/profile-step.ts; the same weights, adapter and batch are written as safetensors for the
 * PyTorch reference (bench/torch_compute.py).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { demoExamples, demoTaskData } from '../coordinator/io/dataset.ts';
import { loadWeights, openModelDir } from '../coordinator/io/model-dir.ts';
import { DEMO_MODEL_DIR } from '../coordinator/io/paths.ts';
import {
  checkLoraConfig,
  checkModelConfig,
  type Gpt2Config,
  type LoraConfig,
  type ModelConfig,
} from '../shared/config.ts';
import { type BaseWeights, compactTensorNames } from '../shared/model/compact-base.ts';
import { CompactWeight } from '../shared/model/compact-linear.ts';
import { type BaseFormatSpec, describeBaseSpec } from '../shared/quant/formats.ts';
import { dequantizeMatrix, quantizeMatrix } from '../shared/quant/quantize.ts';
import { SHAPES } from '../scripts/make-checkpoint.ts';
import { encodeSafetensors } from '../shared/formats/safetensors.ts';
import {
  adaptedModules,
  adapterSpec,
  initAdapter,
  type AdapterState,
  type AdapterTensorSpec,
} from '../shared/lora/adapter.ts';
import {
  createModel,
  linearModulePaths,
  linearShape,
  parameterShapes,
  type CausalLM,
} from '../shared/model/causal-lm.ts';
import { Rng } from '../shared/rng.ts';
import { packMicroBatch, type MicroBatch } from '../shared/train/micro-batch.ts';

/**
 * The demo run's LoRA and global batch (coordinator/commands/demo.ts DEMO_LORA, DEMO_TRAIN.globalBatch),
 * repeated here: importing demo.ts would load the whole coordinator into the bench.
 */
export const DEMO_LORA = checkLoraConfig({ r: 8, alpha: 16, targetModules: ['q_proj', 'v_proj'] });
const DEMO_GLOBAL_BATCH = 32;

export const GPT2_SMALL: Gpt2Config = {
  model_type: 'gpt2',
  vocab_size: 50257,
  n_positions: 1024,
  n_embd: 768,
  n_layer: 12,
  n_head: 12,
  layer_norm_epsilon: 1e-5,
  activation_function: 'gelu_new',
  tie_word_embeddings: true,
};

/** LoRA r=8 on the attention input projections: q,v for Llama, the fused q/k/v c_attn for GPT-2. */
export const GPT2_LORA = checkLoraConfig({ r: 8, alpha: 16, targetModules: ['c_attn'] });

export interface Workload {
  /** short id used in result rows: 'demo' | 'gpt2-small' */
  id: string;
  description: string;
  config: ModelConfig;
  model: CausalLM;
  /** canonical (HF) names; tfjs tensors on the current backend */
  weights: Map<string, tf.Tensor>;
  parameters: number;
  lora: LoraConfig;
  spec: AdapterTensorSpec[];
  adapter: AdapterState;
  mb: MicroBatch;
  /** FLOPs of one training step (forward + backward to the LoRA tensors), see stepFlops */
  flops: number;
  /**
   * the compact base the step runs on, when the workload made it itself (a large model: `weights`
   * are then its dequantized values, for PyTorch only, and may be freed once written)
   */
  base?: BaseWeights;
}

/** B ≠ 0 (a trained-looking adapter) so no gradient path is trivially zero. */
function trainedAdapter(spec: AdapterTensorSpec[], lora: LoraConfig): AdapterState {
  const adapter = initAdapter(spec, lora, 1);
  const rng = new Rng(2);
  for (const t of spec) if (t.which === 'B') adapter.get(t.name)!.forEach((_, i, b) => (b[i] = 0.01 * rng.normal()));
  return adapter;
}

function finish(w: Omit<Workload, 'model' | 'spec' | 'adapter' | 'parameters' | 'flops'>): Workload {
  const spec = adapterSpec(w.config, w.lora);
  return {
    ...w,
    model: createModel(w.config),
    spec,
    adapter: trainedAdapter(spec, w.lora),
    parameters: [...w.weights.values()].reduce((n, t) => n + t.size, 0),
    flops: stepFlops(w.config, w.lora, w.mb.batch, w.mb.time),
  };
}

/** The demo model (models/demo-base, 0.9M parameters) on one global batch of the demo task. */
export async function demoWorkload(): Promise<Workload> {
  const dir = await openModelDir(DEMO_MODEL_DIR);
  const examples = demoExamples(dir.tokenizer, demoTaskData(DEMO_GLOBAL_BATCH, 1, 3));
  const mb = packMicroBatch(examples, dir.tokenizer.padId, 0);
  return finish({
    id: 'demo',
    description: 'demo model (Llama-style, d=128, 6 layers)',
    config: dir.config,
    weights: loadWeights(dir).weights,
    lora: DEMO_LORA,
    mb,
  });
}

/**
 * GPT-2 small's shape (124M parameters, random weights: N(0, 0.02) as GPT-2's init, LayerNorm
 * weight 1 and bias 0) on `batch` random sequences of `time` tokens, every position in the loss.
 */
export function gpt2Workload(batch: number, time: number): Workload {
  const config = GPT2_SMALL;
  const rng = new Rng(11);
  const weights = new Map<string, tf.Tensor>();
  for (const [name, shape] of parameterShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (/ln_\w+\.weight$/.test(name)) data.fill(1);
    else if (!/\.bias$/.test(name)) for (let i = 0; i < data.length; i++) data[i] = 0.02 * rng.normal();
    weights.set(name, tf.tensor(data, shape));
  }
  const inputIds = new Int32Array(batch * time);
  const targets = new Int32Array(batch * time);
  for (let i = 0; i < inputIds.length; i++) {
    inputIds[i] = Math.floor(rng.next() * config.vocab_size);
    targets[i] = Math.floor(rng.next() * config.vocab_size);
  }
  const mb: MicroBatch = {
    batch,
    time,
    inputIds,
    targets,
    lossMask: new Float32Array(batch * time).fill(1),
    dropoutSeed: 0,
  };
  return finish({
    id: 'gpt2-small',
    description: `GPT-2 small shape (124M, random weights), ${batch}×${time} tokens`,
    config,
    weights,
    lora: GPT2_LORA,
    mb,
  });
}

/**
 * Qwen2.5-0.5B's exact shape (494M parameters; scripts/make-checkpoint.ts SHAPES) with random
 * weights, N(0, 0.02) (norm weights 1, biases 0), held as a compact base in `format`; `weights` are
 * the dequantized values (what PyTorch computes with), made one tensor at a time so the float32
 * model and its compact form never need two float32 copies at once. LoRA r=8 on q_proj, v_proj.
 */
export function qwenWorkload(batch: number, time: number, format: BaseFormatSpec): Workload {
  const config = checkModelConfig(SHAPES['qwen2.5-0.5b']);
  const rng = new Rng(13);
  const weights = new Map<string, tf.Tensor>();
  const base: BaseWeights = new Map();
  const compactNames = compactTensorNames(config);
  for (const [name, shape] of parameterShapes(config)) {
    const values = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (/norm\.weight$/.test(name)) values.fill(1);
    else if (!/\.bias$/.test(name)) for (let i = 0; i < values.length; i++) values[i] = 0.02 * rng.normal();
    if (!compactNames.has(name)) {
      const t = tf.tensor(values, shape);
      weights.set(name, t);
      base.set(name, t);
      continue;
    }
    const packed = quantizeMatrix(values, shape[0], shape[1], format);
    base.set(name, new CompactWeight(packed, shape));
    weights.set(name, tf.tensor(dequantizeMatrix(packed), shape));
  }
  const inputIds = Int32Array.from({ length: batch * time }, () => Math.floor(rng.next() * config.vocab_size));
  const mb: MicroBatch = {
    batch,
    time,
    inputIds,
    targets: Int32Array.from({ length: batch * time }, () => Math.floor(rng.next() * config.vocab_size)),
    lossMask: new Float32Array(batch * time).fill(1),
    dropoutSeed: 0,
  };
  const lora = checkLoraConfig({ r: 8, alpha: 16, targetModules: ['q_proj', 'v_proj'] });
  return {
    ...finish({
      id: `qwen2.5-0.5b ${describeBaseSpec(format)}`,
      description: `Qwen2.5-0.5B shape (494M, random weights, ${describeBaseSpec(format)} base), ${batch}×${time} tokens`,
      config,
      weights,
      lora,
      mb,
    }),
    base,
  };
}

/**
 * Analytic FLOPs of one LoRA training step (multiply and add counted as 2), N = B·T tokens:
 *   forward   2·N·P_lin              every linear layer incl. the LM head (P_lin their weights)
 *           + 2·N·r·(d_in + d_out)   per adapted module (x·Aᵀ, then ·Bᵀ)
 *           + 4·B·T²·d_attn per layer  (q·kᵀ and att·v, full T×T: the masked half is computed too)
 *   backward  2·N·P_lin              dx = dy·W only (W frozen, no dW)
 *           + 3·2·N·r·(d_in+d_out)   per adapted module: dA, dB and the branch's dx
 *           + 8·B·T²·d_attn per layer  (d scores, d att, dq, dk, dv: two matmuls' worth each way)
 * Elementwise work (norms, softmax, GELU, loss) is left out: it is memory-bound and a small share of
 * the step (bench/RESULTS.md, Compute, gives the figure).
 * The same formula is written in bench/RESULTS.md.
 */
export function stepFlops(config: ModelConfig, lora: LoraConfig, batch: number, time: number): number {
  const n = batch * time;
  let linearParams = 0;
  for (const path of linearModulePaths(config)) {
    const [dOut, dIn] = linearShape(config, path);
    linearParams += dOut * dIn;
  }
  let loraForward = 0;
  for (const path of adaptedModules(config, lora)) {
    const [dOut, dIn] = linearShape(config, path);
    loraForward += 2 * n * lora.r * (dIn + dOut);
  }
  const layers = config.model_type === 'gpt2' ? config.n_layer : config.num_hidden_layers;
  const dAttn = config.model_type === 'gpt2' ? config.n_embd : config.hidden_size; // heads · head size
  const attention = layers * 4 * batch * time * time * dAttn;
  return 2 * n * linearParams + loraForward + attention + 2 * n * linearParams + 3 * loraForward + 2 * attention;
}

/** Writes config, weights, adapter, batch and LoRA settings for bench/torch_compute.py into dir. */
export async function writeTorchInputs(w: Workload, dir: string): Promise<void> {
  const tensors: Record<string, { data: Float32Array; shape: number[] }> = {};
  // data(), not dataSync(): WebGPU in Node cannot read synchronously
  for (const [name, t] of w.weights) tensors[name] = { data: (await t.data()) as Float32Array, shape: t.shape };
  writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(tensors));
  writeFileSync(
    join(dir, 'adapter.safetensors'),
    encodeSafetensors(
      Object.fromEntries(w.spec.map((t) => [t.name, { data: w.adapter.get(t.name)!, shape: t.shape }])),
    ),
  );
  const { mb } = w;
  writeFileSync(
    join(dir, 'batch.safetensors'),
    encodeSafetensors({
      input_ids: { data: mb.inputIds, shape: [mb.batch, mb.time] },
      targets: { data: mb.targets, shape: [mb.batch, mb.time] },
      loss_mask: { data: mb.lossMask, shape: [mb.batch, mb.time] },
    }),
  );
  writeFileSync(join(dir, 'config.json'), JSON.stringify(w.config));
  writeFileSync(
    join(dir, 'lora.json'),
    JSON.stringify({ r: w.lora.r, alpha: w.lora.alpha, target_modules: w.lora.targetModules }),
  );
}
