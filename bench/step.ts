/**
 * `npm run bench`: the demo model's LoRA training step (one global batch: forward + backward for
 * A/B) on the wasm backend — fast path and plain autodiff — and the same step in the PyTorch
 * reference (bench/torch_step.py, Debian python3-torch, same threads) when available, measured
 * in one run. Prints a table, writes bench/results/step.json and the table in bench/RESULTS.md.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../worker/backend.ts';
import { DEMO_LORA, DEMO_TRAIN } from '../coordinator/demo.ts';
import { demoExamples, demoTaskData } from '../coordinator/dataset.ts';
import { loadWeights, openModelDir } from '../coordinator/model-dir.ts';
import { DEMO_MODEL_DIR } from '../coordinator/paths.ts';
import { encodeSafetensors } from '../shared/formats/safetensors.ts';
import { adapterSpec, initAdapter } from '../shared/lora/adapter.ts';
import { FrozenBase } from '../shared/lora/params.ts';
import { createModel } from '../shared/model/causal-lm.ts';
import { Rng } from '../shared/rng.ts';
import { computeGradients } from '../shared/train/gradients.ts';
import { packMicroBatch } from '../shared/train/micro-batch.ts';

const WARMUP = 3;
const REPEATS = 10;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const backend = await initBackend('wasm');
const dir = await openModelDir(DEMO_MODEL_DIR);
const weights = loadWeights(dir).weights;
const model = createModel(dir.config);
const lora = DEMO_LORA;
const spec = adapterSpec(dir.config, lora);
// A trained-looking adapter (B ≠ 0) so no gradient path is trivially zero.
const adapter = initAdapter(spec, lora, 1);
const rng = new Rng(2);
for (const t of spec) if (t.which === 'B') adapter.get(t.name)!.forEach((_, i, b) => (b[i] = 0.01 * rng.normal()));
const examples = demoExamples(dir.tokenizer, demoTaskData(DEMO_TRAIN.globalBatch, 1, 3));
const mb = packMicroBatch(examples, dir.tokenizer.padId, 0);
const tokens = mb.batch * mb.time;

function timeIt(fn: () => void): number[] {
  for (let i = 0; i < WARMUP; i++) fn();
  return Array.from({ length: REPEATS }, () => {
    const t0 = performance.now();
    fn();
    return performance.now() - t0;
  });
}

const fast = new FrozenBase(dir.config, weights);
const plain = new FrozenBase(dir.config, weights, true);
const fastMs = median(timeIt(() => computeGradients(model, fast, spec, adapter, lora, mb)));
const plainMs = median(timeIt(() => computeGradients(model, plain, spec, adapter, lora, mb)));

// The same step in PyTorch: same weights, adapter and batch, written to a temp dir.
let torch: { ms: number; threads: number; version: string; blas: string } | null = null;
let torchNote = '';
const python = '/usr/bin/python3';
if (existsSync(python) && spawnSync(python, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0) {
  const tmp = mkdtempSync(join(tmpdir(), 'loramesh-bench-'));
  writeFileSync(join(tmp, 'adapter.safetensors'), encodeSafetensors(Object.fromEntries(spec.map((t) => [t.name, { data: adapter.get(t.name)!, shape: t.shape }]))));
  writeFileSync(join(tmp, 'batch.safetensors'), encodeSafetensors({
    input_ids: { data: mb.inputIds, shape: [mb.batch, mb.time] }, targets: { data: mb.targets, shape: [mb.batch, mb.time] },
    loss_mask: { data: mb.lossMask, shape: [mb.batch, mb.time] },
  }));
  writeFileSync(join(tmp, 'lora.json'), JSON.stringify({ r: lora.r, alpha: lora.alpha, target_modules: lora.targetModules, warmup: WARMUP, repeats: REPEATS, threads: 1 }));
  const out = spawnSync(python, [join(import.meta.dirname, 'torch_step.py'), DEMO_MODEL_DIR, tmp], { encoding: 'utf8' });
  if (out.status === 0) torch = JSON.parse(out.stdout.trim().split('\n').pop()!);
  else torchNote = `torch reference failed: ${out.stderr.slice(-500)}`;
} else {
  torchNote = 'python3-torch not installed (apt-get install python3-torch libopenblas0-openmp): no PyTorch column';
}

const rows = [
  ['loramesh wasm (fast path, 1 thread)', fastMs],
  ['loramesh wasm (plain autodiff, 1 thread)', plainMs],
  ...(torch ? [[`PyTorch ${torch.version} CPU (${torch.threads} thread, ${torch.blas})`, torch.ms] as [string, number]] : []),
] as [string, number][];
const result = {
  date: new Date().toISOString(), backend: backend.name, model: 'demo-base', parameters: [...weights.values()].reduce((n, t) => n + t.size, 0),
  lora: { r: lora.r, targets: lora.targetModules }, batch: mb.batch, seqLen: mb.time, tokens,
  rows: rows.map(([name, ms]) => ({ name, msPerStep: ms, tokensPerSecond: tokens / (ms / 1000) })),
  ratioVsTorch: torch ? fastMs / torch.ms : null, fastVsPlain: plainMs / fastMs, note: torchNote || undefined,
};
console.log(`LoRA training step of the demo model: ${mb.batch} sequences × ${mb.time} positions = ${tokens} tokens, r=${lora.r} on ${lora.targetModules.length} module kinds`);
console.log(`median of ${REPEATS} after ${WARMUP} warm-up steps`);
for (const r of result.rows) console.log(`  ${r.name.padEnd(52)} ${r.msPerStep.toFixed(1).padStart(8)} ms/step ${r.tokensPerSecond.toFixed(0).padStart(8)} tokens/s`);
console.log(`  fast path vs plain autodiff: ${result.fastVsPlain.toFixed(2)}× faster`);
if (torch) console.log(`  loramesh wasm / PyTorch: ${result.ratioVsTorch!.toFixed(2)}× (target ≤ 1.5×)`);
if (torchNote) console.log(`  ${torchNote}`);
writeFileSync(join(import.meta.dirname, 'results', 'step.json'), JSON.stringify(result, null, 2) + '\n');

const table = [
  '<!-- step-table:start -->',
  `Measured ${result.date.slice(0, 10)} on this 2-core machine, one run, median of ${REPEATS} steps after ${WARMUP} warm-up (batch ${mb.batch}×${mb.time} = ${tokens} tokens, demo model, LoRA r=${lora.r} on ${lora.targetModules.join(",")}).`,
  '',
  '| implementation | ms/step | tokens/s |',
  '|---|---:|---:|',
  ...result.rows.map((r) => `| ${r.name} | ${r.msPerStep.toFixed(1)} | ${r.tokensPerSecond.toFixed(0)} |`),
  '',
  `Fast path vs plain autodiff: ${result.fastVsPlain.toFixed(2)}×.` + (torch ? ` loramesh wasm / PyTorch: **${result.ratioVsTorch!.toFixed(2)}×** (target for later issues: ≤ 1.5×).` : ` ${torchNote}`),
  '<!-- step-table:end -->',
].join('\n');
const resultsPath = join(import.meta.dirname, 'RESULTS.md');
const old = existsSync(resultsPath) ? readFileSync(resultsPath, 'utf8') : '# Benchmark results\n\n## Training step (`npm run bench`)\n\n<!-- step-table:start -->\n<!-- step-table:end -->\n';
writeFileSync(resultsPath, old.replace(/<!-- step-table:start -->[\s\S]*<!-- step-table:end -->/, table));
