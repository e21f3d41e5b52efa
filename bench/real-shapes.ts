/**
 * `npm run bench:real -- --model DIR [--formats dense,f32,bf16,int8,nf4] [--tokens 32] [--steps 3]
 * [--recompute] [--rank 8] [--no-write]`: one worker's LoRA training step on a real-shaped checkpoint
 * (scripts/make-checkpoint.ts writes random-weight ones at Qwen2.5-0.5B, SmolLM2-360M and
 * Llama-3.2-1B shapes), per base format, each in a fresh child process on the wasm backend so its
 * peak RSS (VmHWM) is its own: quantizing into a compact base file (node/compact-file.ts, as a
 * coordinator does), loading it (as a worker does), bytes held, median step time, peak RSS, wasm heap.
 * "dense" is a checkpoint loaded as float32 tensors without --base-format, then held as a worker holds
 * it on wasm (baseForKernels: each matrix once, as compact f32, converted one at a time).
 * Writes bench/results/real-shapes-<model>.json and a section of bench/RESULTS.md.
 */
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { describeMachine, fmt, peakRssBytes, provenance, replaceSection, stats, writeJson } from './lib/results.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    formats: { type: 'string', default: 'dense,f32,bf16,int8,nf4' },
    tokens: { type: 'string', default: '32' },
    steps: { type: 'string', default: '3' },
    rank: { type: 'string', default: '8' },
    recompute: { type: 'boolean', default: false },
    'no-write': { type: 'boolean', default: false },
    child: { type: 'string' },
  },
});

if (values.child) {
  const tf = await import('@tensorflow/tfjs-core');
  const { initBackend } = await import('../node/backend.ts');
  const { loadSafetensorsFiles } = await import('../node/load-weights.ts');
  const { loadCompactBaseFile, writeCompactBaseFile } = await import('../node/compact-file.ts');
  const { openModelDir } = await import('../coordinator/io/model-dir.ts');
  const { checkLoraConfig } = await import('../shared/config.ts');
  const { adapterSpec, initAdapter } = await import('../shared/lora/adapter.ts');
  const { FrozenBase } = await import('../shared/lora/params.ts');
  const { createModel } = await import('../shared/model/causal-lm.ts');
  const { CompactWeight } = await import('../shared/model/compact-linear.ts');
  const { baseForKernels } = await import('../shared/model/compact-base.ts');
  const { computeGradients } = await import('../shared/train/gradients.ts');
  const { Rng } = await import('../shared/rng.ts');
  await initBackend('wasm');
  const format = values.child;
  const dir = await openModelDir(values.model!);
  const paths = dir.files.filter((f) => f.name.endsWith('.safetensors')).map((f) => f.path);
  // A compact base is quantized into a compact base file first (as a coordinator does), then loaded (as a worker does).
  const compactFile = join(tmpdir(), `loramesh-bench-${process.pid}.safetensors`);
  let quantizeMs = 0;
  if (format !== 'dense') {
    const q0 = performance.now();
    writeCompactBaseFile(dir.config, paths, { format: format as 'nf4' }, {}, compactFile);
    quantizeMs = performance.now() - q0;
  }
  const t0 = performance.now();
  const weights =
    format === 'dense' ? loadSafetensorsFiles(dir.config, paths).weights : loadCompactBaseFile(dir.config, compactFile);
  const loadMs = performance.now() - t0;
  if (format !== 'dense') rmSync(compactFile, { force: true });
  let heldBytes = 0;
  for (const w of weights.values()) heldBytes += w instanceof CompactWeight ? w.heldBytes : 4 * w.size;
  const base = new FrozenBase(dir.config, format === 'dense' ? baseForKernels(dir.config, weights) : weights);
  const model = createModel(dir.config);
  const targets = dir.config.model_type === 'gpt2' ? (['c_attn'] as const) : (['q_proj', 'v_proj'] as const);
  const lora = checkLoraConfig({ r: Number(values.rank), alpha: 2 * Number(values.rank), targetModules: [...targets] });
  const spec = adapterSpec(dir.config, lora);
  const adapter = initAdapter(spec, lora, 1);
  const time = Number(values.tokens);
  const rng = new Rng(7);
  const ids = Int32Array.from({ length: time }, () => Math.floor(rng.next() * dir.config.vocab_size));
  const mb = {
    batch: 1,
    time,
    dropoutSeed: 0,
    inputIds: ids,
    targets: Int32Array.from({ length: time }, (_, i) => ids[(i + 1) % time]),
    lossMask: new Float32Array(time).fill(1),
  };
  const stepMs: number[] = [];
  let loss = Number.NaN;
  for (let s = 0; s < Number(values.steps); s++) {
    const t = performance.now();
    const r = computeGradients(model, base, spec, adapter, lora, mb as never, { recompute: values.recompute });
    stepMs.push(performance.now() - t);
    loss = r.lossSum / r.tokenCount;
  }
  const heap = (tf.backend() as unknown as { wasm: { HEAPU8: Uint8Array } }).wasm.HEAPU8.byteLength;
  console.log(
    JSON.stringify({ format, quantizeMs, loadMs, heldBytes, stepMs, loss, peakRss: peakRssBytes(), wasmHeap: heap }),
  );
  process.exit(0);
}

if (!values.model)
  throw new Error('--model DIR is required (npm run make-checkpoint -- --shape qwen2.5-0.5b --out DIR)');
const rows: Record<string, unknown>[] = [];
for (const format of values.formats!.split(',')) {
  const args = ['--import', 'tsx', import.meta.filename, '--child', format, '--model', values.model];
  args.push('--tokens', values.tokens!, '--steps', values.steps!, '--rank', values.rank!);
  if (values.recompute) args.push('--recompute');
  const child = spawnSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 1 << 26 });
  const last = child.stdout.trim().split('\n').pop() ?? '';
  if (child.status !== 0 || !last.startsWith('{')) {
    const why =
      (child.stderr || child.stdout).split('\n').filter((l) => /LM_ERR|Error|Aborted/.test(l))[0] ??
      `exit ${child.status}`;
    console.log(`${format}: failed: ${why.slice(0, 300)}`);
    rows.push({ format, error: why.slice(0, 300) });
    continue;
  }
  const r = JSON.parse(last);
  const step = stats(r.stepMs.slice(1).length ? r.stepMs.slice(1) : r.stepMs);
  rows.push({ ...r, stepMedianMs: step.median });
  console.log(
    `${format}: quantize ${fmt(r.quantizeMs / 1000)} s, load ${fmt(r.loadMs / 1000)} s, held ${fmt(r.heldBytes / 1e6)} MB, step ${fmt(step.median)} ms ` +
      `(${values.tokens} tokens), peak RSS ${fmt(r.peakRss / 1e6)} MB, wasm heap ${fmt(r.wasmHeap / 1e6)} MB, loss ${fmt(r.loss)}`,
  );
}
const name = basename(values.model.replace(/\/$/, ''));
const date = new Date().toISOString();
const command = `npm run bench:real -- ${process.argv.slice(2).join(' ')}`;
if (!values['no-write']) {
  writeJson(`real-shapes-${name}`, { date, machine: describeMachine(), command, rows });
  const table = [
    '| base format | quantize (s) | load (s) | weights held (MB) | step, median (ms) | peak RSS (MB) | wasm heap (MB) |',
    '|---|---|---|---|---|---|---|',
    ...rows.map((r) =>
      r.error
        ? `| ${r.format} | refused: ${String(r.error).replace(/\|/g, '/')} | | | | | |`
        : `| ${r.format} | ${fmt(Number(r.quantizeMs) / 1000)} | ${fmt(Number(r.loadMs) / 1000)} | ${fmt(Number(r.heldBytes) / 1e6)} | ${fmt(Number(r.stepMedianMs))} | ${fmt(Number(r.peakRss) / 1e6)} | ${fmt(Number(r.wasmHeap) / 1e6)} |`,
    ),
  ].join('\n');
  const what = `one worker, one LoRA step (r ${values.rank}, 1 × ${values.tokens} tokens${values.recompute ? ', recompute' : ''})`;
  replaceSection(`real-shapes-${name}`, `Real shapes: ${name}, ${what}`, `${provenance(date, command)}\n\n${table}`);
}
