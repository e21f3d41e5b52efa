/**
 * `npm run bench:load`: peak RSS while loading a 124M-parameter GPT-2-shaped checkpoint (random
 * weights written here, F32 safetensors, ~498 MB) with the streaming per-tensor loader, against
 * the weight bytes. The load runs in a fresh child process so its peak RSS is its own.
 * Writes bench/results/load-memory.json and the table in bench/RESULTS.md.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Gpt2Config } from '../shared/config.ts';
import { encodeSafetensors } from '../shared/formats/safetensors.ts';
import { parameterShapes } from '../shared/model/causal-lm.ts';
import { Rng } from '../shared/rng.ts';
import { peakRssBytes } from './lib/results.ts';

const GPT2_SMALL: Gpt2Config = {
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

if (process.argv[2] === 'load') {
  // Child: load and report.
  const { initBackend } = await import('../node/backend.ts');
  const { loadSafetensorsFiles } = await import('../node/load-weights.ts');
  await initBackend('wasm');
  const before = process.memoryUsage().rss;
  const t0 = performance.now();
  const { weights } = loadSafetensorsFiles(GPT2_SMALL, [process.argv[3]]);
  const ms = performance.now() - t0;
  const params = [...weights.values()].reduce((n, t) => n + t.size, 0);
  console.log(
    JSON.stringify({
      params,
      rssBeforeLoad: before,
      rssAfterLoad: process.memoryUsage().rss,
      peakRss: peakRssBytes(),
      loadMs: ms,
    }),
  );
  process.exit(0);
}

const dir = mkdtempSync(join(tmpdir(), 'loramesh-load-'));
const file = join(dir, 'model.safetensors');
const rng = new Rng(1);
const tensors: Record<string, { data: Float32Array; shape: number[] }> = {};
for (const [name, shape] of parameterShapes(GPT2_SMALL)) {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = (rng.next() - 0.5) * 0.04;
  tensors[name.replace(/^transformer\./, '')] = { data, shape };
}
writeFileSync(file, encodeSafetensors(tensors, { format: 'pt' }));
const fileBytes = statSync(file).size;
const child = spawnSync(process.execPath, ['--import', 'tsx', import.meta.filename, 'load', file], {
  encoding: 'utf8',
});
rmSync(dir, { recursive: true, force: true });
if (child.status !== 0) throw new Error(child.stderr.slice(-2000));
const r = JSON.parse(child.stdout.trim().split('\n').pop()!);
const weightBytes = 4 * r.params;
const result = {
  date: new Date().toISOString(),
  model: 'GPT-2 small shape (random weights)',
  params: r.params,
  fileBytes,
  weightBytes,
  peakRss: r.peakRss,
  rssBeforeLoad: r.rssBeforeLoad,
  peakOverWeights: r.peakRss / weightBytes,
  loadMs: r.loadMs,
};
const mb = (b: number) => `${(b / 1e6).toFixed(0)} MB`;
console.log(
  `loaded ${r.params.toLocaleString()} parameters (${mb(weightBytes)} float32) ` +
    `from a ${mb(fileBytes)} file in ${(r.loadMs / 1000).toFixed(1)} s`,
);
console.log(
  `peak RSS ${mb(r.peakRss)} (${mb(r.rssBeforeLoad)} before the load) = ` +
    `${result.peakOverWeights.toFixed(2)}× the weight bytes (target < 2×)`,
);
writeFileSync(join(import.meta.dirname, 'results', 'load-memory.json'), JSON.stringify(result, null, 2) + '\n');
const table = [
  '<!-- load-table:start -->',
  `Measured ${result.date.slice(0, 10)}: ${r.params.toLocaleString()}-parameter GPT-2-small-shaped checkpoint ` +
    `(random F32 weights, ${mb(fileBytes)}), wasm backend, streaming per-tensor loader, fresh process.`,
  '',
  '| weight bytes | RSS before load | peak RSS | peak / weights | load time |',
  '|---:|---:|---:|---:|---:|',
  `| ${mb(weightBytes)} | ${mb(r.rssBeforeLoad)} | ${mb(r.peakRss)} | ` +
    `**${result.peakOverWeights.toFixed(2)}×** | ${(r.loadMs / 1000).toFixed(1)} s |`,
  '<!-- load-table:end -->',
].join('\n');
const resultsPath = join(import.meta.dirname, 'RESULTS.md');
let md = existsSync(resultsPath) ? readFileSync(resultsPath, 'utf8') : '# Benchmark results\n';
if (!md.includes('<!-- load-table:start -->'))
  md += '\n## Loading a 124M checkpoint (`npm run bench:load`)\n\n<!-- load-table:start -->\n<!-- load-table:end -->\n';
writeFileSync(resultsPath, md.replace(/<!-- load-table:start -->[\s\S]*<!-- load-table:end -->/, table));
