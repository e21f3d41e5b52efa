/**
 * Where the time of one LoRA training step goes, per tfjs kernel (tf.profile), on the demo model
 * and the GPT-2-small shape. Not part of the benchmark table; a tool for finding hot spots.
 * Usage: tsx bench/profile-step.ts [demo|gpt2] [--backend wasm|cpu] [--batch B --time T] [--top N]
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, type BackendName } from '../node/backend.ts';
import { FrozenBase } from '../shared/lora/params.ts';
import { baseForKernels } from '../shared/model/compact-base.ts';
import { computeGradients } from '../shared/train/gradients.ts';
import { demoWorkload, gpt2Workload } from './compute-workloads.ts';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    backend: { type: 'string', default: 'wasm' },
    batch: { type: 'string', default: '2' },
    time: { type: 'string', default: '128' },
    top: { type: 'string', default: '25' },
  },
});
await initBackend(values.backend as BackendName, console.log);
const w = positionals[0] === 'gpt2' ? gpt2Workload(Number(values.batch), Number(values.time)) : await demoWorkload();
// the base as a worker holds it (on wasm: compact f32 through kernels/c/compact-gemm.c)
const base = new FrozenBase(w.config, baseForKernels(w.config, w.weights));
const step = () => computeGradients(w.model, base, w.spec, w.adapter, w.lora, w.mb);
step();
step();
const t0 = performance.now();
step();
const wall = performance.now() - t0;
const profile = await tf.profile(() => {
  step();
});
const byKernel = new Map<string, { ms: number; calls: number }>();
const byShape = new Map<string, { ms: number; calls: number }>();
for (const k of profile.kernels) {
  const ms = k.kernelTimeMs as number;
  const add = (map: typeof byKernel, key: string) => {
    const e = map.get(key) ?? { ms: 0, calls: 0 };
    e.ms += ms;
    e.calls++;
    map.set(key, e);
  };
  add(byKernel, k.name);
  add(byShape, `${k.name} ${JSON.stringify(k.inputShapes)} → ${JSON.stringify(k.outputShapes)}`);
}
// customGrad ops show up as 'forward' around the kernels they run: counted once, not twice
const total = [...byKernel].filter(([name]) => name !== 'forward').reduce((s, [, e]) => s + e.ms, 0);
const top = Number(values.top);
console.log(
  `${w.description}: step ${wall.toFixed(0)} ms wall, ` +
    `${total.toFixed(0)} ms in ${profile.kernels.length} kernels, ${(w.flops / 1e9).toFixed(2)} GFLOP`,
);
console.log('by kernel:');
for (const [name, e] of [...byKernel].sort((a, b) => b[1].ms - a[1].ms).slice(0, top))
  console.log(`  ${e.ms.toFixed(1).padStart(8)} ms ${String(e.calls).padStart(5)}×  ${name}`);
console.log('by kernel and shape:');
for (const [name, e] of [...byShape].sort((a, b) => b[1].ms - a[1].ms).slice(0, top))
  console.log(`  ${e.ms.toFixed(1).padStart(8)} ms ${String(e.calls).padStart(5)}×  ${name.slice(0, 160)}`);
