/**
 * `npm run bench:gemm [-- --threads 1,2 --arithmetic simd128,relaxed-fma]`: the frozen products of a
 * LoRA step alone, on wasm: the project's GEMM (kernels/c/compact-gemm.c) with W held in each base
 * format, forward x·Wᵀ and backward dy·W, next to XNNPACK's tf.matMul on the float32 W, at the shapes
 * a step multiplies (GPT-2 small's MLP with 256 rows, Qwen2.5-0.5B's MLP with 32), and this CPU's
 * register-only multiply-add peak. Best of 8 after 2 warm-up runs, GFLOP/s. Each thread count and
 * variant runs in its own process (a process's wasm thread count is fixed). Writes
 * bench/results/gemm.json and a section of bench/RESULTS.md.
 */
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { selectArithmetic } from '../kernels/arithmetic.ts';
import { wasmPeakGflops } from '../kernels/wasm-kernels.ts';
import { initBackend } from '../node/backend.ts';
import type { ArithmeticVariant } from '../shared/arithmetic.ts';
import { CompactWeight, compactProducts } from '../shared/model/compact-linear.ts';
import type { BaseFormatSpec } from '../shared/quant/formats.ts';
import { quantizeMatrix } from '../shared/quant/quantize.ts';
import { fmt, provenance, replaceSection, writeJson } from './lib/results.ts';

/** (rows n, d_in, d_out) */
const SHAPES: [number, number, number][] = [
  [256, 768, 3072],
  [256, 3072, 768],
  [32, 896, 4864],
  [32, 4864, 896],
];
const FORMATS: BaseFormatSpec[] = [{ format: 'f32' }, { format: 'int8' }, { format: 'nf4' }];

interface Row {
  threads: number;
  arithmetic: ArithmeticVariant;
  shape: [number, number, number];
  /** GFLOP/s: XNNPACK forward and backward, then ours per format */
  xnnpack: { forward: number; backward: number };
  ours: Record<string, { forward: number; backward: number }>;
  peak: number;
}

async function measure(threads: number, arithmetic: ArithmeticVariant): Promise<Row[]> {
  await initBackend('wasm', () => {}, { wasmThreads: threads });
  selectArithmetic(arithmetic);
  // a CPU property, measured where no helper thread runs
  const peak = threads === 1 ? (wasmPeakGflops() ?? 0) : 0;
  const rows: Row[] = [];
  for (const shape of SHAPES) {
    const [n, dIn, dOut] = shape;
    const flops = 2 * n * dIn * dOut;
    const rate = (run: () => tf.Tensor) => {
      let best = Infinity;
      for (let i = 0; i < 10; i++) {
        const t0 = performance.now();
        const y = run();
        y.dataSync();
        y.dispose();
        if (i >= 2) best = Math.min(best, performance.now() - t0);
      }
      return flops / best / 1e6;
    };
    const x = tf.randomNormal([n, dIn]) as tf.Tensor2D;
    const dy = tf.randomNormal([n, dOut]) as tf.Tensor2D;
    const w = tf.randomNormal([dOut, dIn], 0, 0.02) as tf.Tensor2D;
    // XNNPACK takes plain 2-D products only (a transposed one runs our lm_gemm): W given pre-transposed forward
    const wT = tf.transpose(w) as tf.Tensor2D;
    const xnnpack = { forward: rate(() => tf.matMul(x, wT)), backward: rate(() => tf.matMul(dy, w)) };
    wT.dispose();
    const values = w.dataSync() as Float32Array;
    const ours: Row['ours'] = {};
    for (const spec of FORMATS) {
      const weight = new CompactWeight(quantizeMatrix(values, dOut, dIn, spec));
      const products = compactProducts(weight);
      ours[spec.format] = { forward: rate(() => products.forward(x)), backward: rate(() => products.backward(dy)) };
      weight.dispose();
    }
    tf.dispose([x, dy, w]);
    rows.push({ threads, arithmetic, shape, xnnpack, ours, peak });
  }
  return rows;
}

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '1,2' },
    arithmetic: { type: 'string', default: 'simd128,relaxed-fma' },
    child: { type: 'string' },
    'no-write': { type: 'boolean', default: false },
  },
});
if (values.child) {
  const [threads, arithmetic] = values.child.split(':');
  console.log(JSON.stringify(await measure(Number(threads), arithmetic as ArithmeticVariant)));
  process.exit(0);
}
const rows: Row[] = [];
for (const threads of values.threads!.split(',').map(Number))
  for (const arithmetic of values.arithmetic!.split(',')) {
    const out = spawnSync(
      process.execPath,
      ['--import', 'tsx', import.meta.filename, '--child', `${threads}:${arithmetic}`],
      {
        encoding: 'utf8',
        maxBuffer: 16 * 2 ** 20,
      },
    );
    if (out.status !== 0) throw new Error(`${threads} threads, ${arithmetic}: ${out.stderr.slice(-2000)}`);
    const measured = JSON.parse(out.stdout.trim().split('\n').pop()!) as Row[];
    for (const r of measured)
      console.log(
        `${r.threads} thread(s), ${r.arithmetic}, ${r.shape.join('×')}: XNNPACK ${fmt(r.xnnpack.forward)} / ` +
          `${fmt(r.xnnpack.backward)}; ours ${FORMATS.map((f) => `${f.format} ${fmt(r.ours[f.format].forward)} / ${fmt(r.ours[f.format].backward)}`).join(', ')}; ` +
          `${r.peak ? `peak ${fmt(r.peak)} per thread` : ''}`,
      );
    rows.push(...measured);
  }
if (!values['no-write']) {
  const date = new Date().toISOString();
  const command = `npm run bench:gemm -- ${process.argv.slice(2).join(' ')}`.trim();
  writeJson('gemm', { date, command, rows });
  const cell = (r: { forward: number; backward: number }) => `${fmt(r.forward)} / ${fmt(r.backward)}`;
  const table = [
    `| threads | arithmetic | n × d_in × d_out | XNNPACK (float32 W) | ${FORMATS.map((f) => `ours, ${f.format}`).join(' | ')} | register-only peak, 1 thread |`,
    `|---|---|---|---:|${FORMATS.map(() => '---:').join('|')}|---:|`,
    ...rows.map(
      (r) =>
        `| ${r.threads} | ${r.arithmetic} | ${r.shape.join(' × ')} | ${cell(r.xnnpack)} | ` +
        `${FORMATS.map((f) => `**${cell(r.ours[f.format])}**`).join(' | ')} | ${r.peak ? fmt(r.peak) : '–'} |`,
    ),
  ].join('\n');
  replaceSection(
    'gemm',
    'Compact GEMM: the frozen products alone (issue 17)',
    `${provenance(date, command)} GFLOP/s, forward x·Wᵀ / backward dy·W, best of 8; ours reads W in the ` +
      'format named (f32: a float32 base as workers hold it), XNNPACK the float32 W through tf.matMul as plain 2-D products (W pre-transposed forward).\n\n' +
      table,
  );
}
process.exit(0);
