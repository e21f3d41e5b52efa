/**
 * `npm run bench:bandwidth`: bytes per step per worker for wire codecs f32/bf16/int8 and local
 * steps H, on the demo model (measured from real frames of real runs, with eval loss and exact
 * match after the same number of samples) and on GPT-2-small and Llama-7B shapes (computed from
 * their real adapter shapes with the per-frame overhead measured on the demo). Writes
 * bench/results/bandwidth.json, two figures (SVG + PNG) and the tables in bench/RESULTS.md.
 *
 *   npm run bench:bandwidth [-- --quick]
 *
 * "Per step per worker" is per synchronous-step equivalent (the samples of one global batch) for
 * a worker that computes one micro-batch per step (global batch = workers × micro-batch): one
 * result up and one parameter version down. A local-steps run with H takes 1/H as many (outer)
 * steps for the same samples, so each worker sends and receives 1/H as often.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkModelConfig, type LoraConfig, type ModelConfig } from '../shared/config.ts';
import { accuracy, predict } from '../shared/data/exact-match.ts';
import { toExample } from '../shared/data/demo-tasks.ts';
import { adapterParameterCount, adapterSpec, mergeAdapter } from '../shared/lora/adapter.ts';
import { FrozenBase } from '../shared/lora/params.ts';
import { createModel, parameterShapes } from '../shared/model/causal-lm.ts';
import { codecBytes, describeCodec, type CodecSpec } from '../shared/protocol/wire-codec.ts';
import { DEMO_LORA, DEMO_TRAIN } from '../coordinator/commands/demo.ts';
import { demoExamples, demoTaskData } from '../coordinator/io/dataset.ts';
import { loadWeights, openModelDir } from '../coordinator/io/model-dir.ts';
import { DEMO_MODEL_DIR } from '../coordinator/io/paths.ts';
import { runTraining } from '../coordinator/run/train.ts';
import { lineChartSvg } from '../shared/analysis/plot-lines.ts';
import { writeFigure } from '../coordinator/io/analysis-io.ts';
import { initBackend } from '../node/backend.ts';
import {
  cliFlags,
  figure,
  machine,
  provenance,
  replaceSection,
  writeJson,
  type Figure,
  type Machine,
} from './lib/results.ts';

export interface Setting {
  codec: CodecSpec;
  /** local steps; 1 = synchronous data parallelism */
  H: number;
}

export interface BandwidthOptions {
  quick: boolean;
  /** write bench/results and bench/RESULTS.md (default true) */
  write?: boolean;
  /** sync-step equivalents of samples per run (default 80, quick 8); a multiple of every H */
  samples?: number;
  settings?: Setting[];
  /** how it was started, for RESULTS.md (default `npm run bench:bandwidth`) */
  command?: string;
  log?: (line: string) => void;
}

const F32: CodecSpec = { name: 'f32' };
const BF16: CodecSpec = { name: 'bf16' };
const INT8: CodecSpec = { name: 'int8', blockSize: 64 };
/**
 * f32 and int8 at H = 1, 4, 16, int8 at H = 8, bf16 at H = 1: eight short runs, few enough to keep `npm run bench`
 * within its 15-minute budget (per-benchmark times: bench/RESULTS.md).
 */
const FULL_GRID: Setting[] = [1, 4, 16]
  .flatMap((H) => [F32, INT8].map((codec) => ({ codec, H })))
  .concat([
    { codec: INT8, H: 8 },
    { codec: BF16, H: 1 },
  ]);
const QUICK_GRID: Setting[] = [
  { codec: F32, H: 1 },
  { codec: INT8, H: 1 },
  { codec: INT8, H: 4 },
];
/**
 * Outer step of local-steps runs: picked on the demo task at H=8 (0.9/0.7 beat DiLoCo's 0.7/0.9 there);
 * the same for every H.
 */
const OUTER = { outerLr: 0.9, outerMomentum: 0.7 };
const WORKERS = 2;

/** Real shapes: the demo model, GPT-2 small (r=8 on the fused c_attn) and Llama-2-7B (r=8 on q,v). */
const SHAPES: { name: string; config: ModelConfig; lora: LoraConfig }[] = [
  {
    name: 'GPT-2 small (124M), r=8 c_attn',
    config: checkModelConfig({
      model_type: 'gpt2',
      vocab_size: 50257,
      n_positions: 1024,
      n_embd: 768,
      n_layer: 12,
      n_head: 12,
      layer_norm_epsilon: 1e-5,
      activation_function: 'gelu_new',
      tie_word_embeddings: true,
    }),
    lora: { ...DEMO_LORA, targetModules: ['c_attn'] },
  },
  {
    name: 'Llama-2-7B, r=8 q,v',
    config: checkModelConfig({
      model_type: 'llama',
      vocab_size: 32000,
      hidden_size: 4096,
      intermediate_size: 11008,
      num_hidden_layers: 32,
      num_attention_heads: 32,
      num_key_value_heads: 32,
      max_position_embeddings: 4096,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      tie_word_embeddings: false,
    }),
    lora: DEMO_LORA,
  },
];

const label = (s: Setting) => `${describeCodec(s.codec)} H=${s.H}`;
const modelParameterCount = (config: ModelConfig) =>
  [...parameterShapes(config).values()].reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);

interface MeasuredRow {
  setting: string;
  codec: string;
  H: number;
  outerSteps: number;
  /** per sync-step equivalent per worker, WebSocket frames incl. headers */
  upBytes: number;
  /** parameters down (frames), without the micro-batch data */
  downBytes: number;
  /** micro-batch frames (the training data itself) */
  dataBytes: number;
  /** frame bytes / encoded payload bytes, results and parameters */
  upOverhead: number;
  downOverhead: number;
  /** whole-run sums behind the per-step figures */
  totals: Record<string, number>;
  evalLoss: number;
  exactMatch: number;
  factorGap: number | null;
  wallSeconds: number;
}

export async function runBandwidthBench(o: BandwidthOptions): Promise<Record<string, unknown>> {
  const log = o.log ?? ((line: string) => console.log(line));
  await initBackend('wasm');
  const figures: Figure[] = [];
  const samples = o.samples ?? (o.quick ? 8 : 80);
  const settings = o.settings ?? (o.quick ? QUICK_GRID : FULL_GRID);
  const model = await openModelDir(DEMO_MODEL_DIR);
  const weights = loadWeights(model).weights;
  const data = demoTaskData(2000, o.quick ? 50 : 200, DEMO_TRAIN.seed);
  const examples = demoExamples(model.tokenizer, data);
  const evalExamples = data.eval.map((s) => toExample(model.tokenizer, s));
  const spec = adapterSpec(model.config, DEMO_LORA);
  const causalLm = createModel(model.config);
  const scratch = mkdtempSync(join(tmpdir(), 'loramesh-bandwidth-'));
  const measured: MeasuredRow[] = [];
  for (const s of settings) {
    if (samples % s.H !== 0) throw new Error(`samples ${samples} is not a multiple of H=${s.H}`);
    const started = performance.now();
    const result = await runTraining({
      model,
      examples,
      evalExamples,
      weights,
      config: {
        run: {
          lora: DEMO_LORA,
          train: {
            ...DEMO_TRAIN,
            steps: samples / s.H,
            warmupSteps: Math.max(1, Math.round(DEMO_TRAIN.warmupSteps / s.H)),
          },
          wire: { up: s.codec, down: s.codec },
          local: s.H > 1 ? { steps: s.H, innerLr: DEMO_TRAIN.lr, ...OUTER } : null,
        },
        deployment: {
          evalEvery: 1_000_000,
          outDir: scratch,
          runId: label(s).replace(/[^a-z0-9]+/gi, '-'),
          localWorkers: WORKERS,
          backend: 'wasm',
        },
      },
      workerOutput: 'ignore',
      progress: false,
      log: () => {},
    });
    const rows = result.metrics;
    const sum = (k: keyof (typeof rows)[number]) => rows.reduce((n, r) => n + (r[k] as number), 0);
    // Results and micro-batches: per job slot (K per step); parameters: per receiving worker.
    const K = DEMO_TRAIN.globalBatch / DEMO_TRAIN.microBatch;
    const perSlot = (bytes: number) => bytes / samples / K;
    const perReceiver = (bytes: number) => bytes / samples / WORKERS;
    const paramsBytes = sum('paramsDown');
    const merged = new FrozenBase(model.config, mergeAdapter(model.config, weights, spec, result.adapter, DEMO_LORA));
    const gaps = rows.map((r) => r.factorGap).filter((g): g is number => g !== undefined);
    const row: MeasuredRow = {
      setting: label(s),
      codec: describeCodec(s.codec),
      H: s.H,
      outerSteps: rows.length,
      upBytes: perSlot(sum('bytesUp')),
      downBytes: perReceiver(paramsBytes),
      dataBytes: perSlot(sum('dataDown')),
      upOverhead: sum('bytesUp') / sum('payloadUp'),
      downOverhead: paramsBytes / sum('payloadDown'),
      totals: {
        bytesUp: sum('bytesUp'),
        payloadUp: sum('payloadUp'),
        paramsDown: paramsBytes,
        payloadDown: sum('payloadDown'),
        dataDown: sum('dataDown'),
        fp32LoraBytes: sum('fp32LoraBytes'),
        fullFineTuneBytes: sum('fullFineTuneBytes'),
      },
      evalLoss: result.evalLosses.at(-1)!.loss,
      exactMatch: accuracy(predict(causalLm, merged, model.tokenizer, data.eval)),
      factorGap: gaps.length ? gaps.reduce((a, b) => a + b, 0) / gaps.length : null,
      wallSeconds: (performance.now() - started) / 1000,
    };
    merged.dispose();
    measured.push(row);
    const perStep = rows.map((r) => (r.bytesUp / K + r.paramsDown / WORKERS) / (s.H * 1000));
    figures.push(
      figure(
        `bandwidth ${row.setting}: LoRA bytes per step per worker`,
        'kB',
        perStep.length > 1 ? perStep.slice(1) : perStep,
      ),
    );
    figures.push(figure(`bandwidth ${row.setting}: eval loss after ${samples} steps' samples`, '', [row.evalLoss]));
    log(
      `${row.setting.padEnd(14)} up ${fmt(row.upBytes)} down ${fmt(row.downBytes)} ` +
        `(+ data ${fmt(row.dataBytes)}) per step per worker; ` +
        `overhead up ${pct(row.upOverhead - 1)} down ${pct(row.downOverhead - 1)}; ` +
        `eval loss ${row.evalLoss.toFixed(4)}, exact match ${pct(row.exactMatch)}` +
        `${row.factorGap !== null ? `, factor gap ${row.factorGap.toFixed(3)}` : ''} (${row.wallSeconds.toFixed(0)} s)`,
    );
  }
  rmSync(scratch, { recursive: true, force: true });

  // Shapes: payload from the real adapter shapes, plus the per-frame overhead measured above.
  const frameOverhead = (dir: 'up' | 'down') => {
    const ref = measured.find((m) => m.codec === 'f32' && m.H === 1) ?? measured[0];
    const payload = 4 * adapterParameterCount(spec);
    return dir === 'up' ? (ref.upOverhead - 1) * payload : (ref.downOverhead - 1) * payload;
  };
  const demoShape = { name: 'demo (0.89M), r=8 q,v', config: model.config, lora: DEMO_LORA };
  const grid = [1, 4, 16].flatMap((H) => [F32, BF16, INT8].map((codec) => ({ codec, H })));
  const computed = [demoShape, ...SHAPES].map(({ name, config, lora }) => {
    const P = adapterParameterCount(adapterSpec(config, lora));
    const fp32Lora = 2 * (4 * P) + frameOverhead('up') + frameOverhead('down');
    const fullFineTune = 2 * 4 * modelParameterCount(config);
    return {
      model: name,
      loraParameters: P,
      modelParameters: modelParameterCount(config),
      fp32LoraBytes: fp32Lora,
      fullFineTuneBytes: fullFineTune,
      rows: grid.map((s) => {
        const bytes =
          (codecBytes(P, s.codec) + frameOverhead('up') + codecBytes(P, s.codec) + frameOverhead('down')) / s.H;
        return { setting: label(s), bytes, vsFp32Lora: fp32Lora / bytes, vsFullFineTune: fullFineTune / bytes };
      }),
    };
  });

  const reference = measured.find((m) => m.codec === 'f32' && m.H === 1);
  const lora = (m: MeasuredRow) => m.upBytes + m.downBytes;
  const targets = reference
    ? {
        maxProtocolOverhead: Math.max(...measured.map((m) => Math.max(m.upOverhead, m.downOverhead))) - 1,
        int8VsF32EvalLoss: (() => {
          const int8 = measured.find((m) => m.codec.startsWith('int8') && m.H === 1);
          return int8 ? int8.evalLoss / reference.evalLoss - 1 : null;
        })(),
        best16x:
          measured
            .filter((m) => lora(reference) / lora(m) >= 16)
            .map((m) => ({
              setting: m.setting,
              fewerBytes: lora(reference) / lora(m),
              evalLossChange: m.evalLoss / reference.evalLoss - 1,
            }))
            .sort((a, b) => a.evalLossChange - b.evalLossChange)[0] ?? null,
      }
    : null;
  const command = o.command ?? `npm run bench:bandwidth${o.quick ? ' -- --quick' : ''}`;
  const result = {
    date: new Date().toISOString(),
    machine: machine(),
    command,
    samples,
    workers: WORKERS,
    outer: OUTER,
    measured,
    computed,
    targets,
    figures,
  };
  if ((o.write ?? true) && o.quick) writeJson('bandwidth.quick', result);
  if ((o.write ?? true) && !o.quick) {
    writeJson('bandwidth', result);
    writeFigures(measured, computed);
    replaceSection(
      'bandwidth-table',
      'Bytes on the wire: codecs and local steps (`npm run bench:bandwidth`)',
      table(result, measured, computed),
    );
  }
  return result;
}

const fmt = (b: number) =>
  b >= 1e9 ? `${(b / 1e9).toFixed(2)} GB` : b >= 1e6 ? `${(b / 1e6).toFixed(2)} MB` : `${(b / 1e3).toFixed(1)} kB`;
const pct = (x: number) => `${(100 * x).toFixed(1)} %`;

function writeFigures(
  measured: MeasuredRow[],
  computed: { model: string; rows: { setting: string; bytes: number }[] }[],
): void {
  const dir = join(import.meta.dirname, 'results');
  const byCodec = (rows: { setting: string; value: number }[]) =>
    ['f32', 'bf16', 'int8/64'].map((codec) => ({
      name: codec,
      values: [1, 4, 16].map((H) => rows.find((r) => r.setting === `${codec} H=${H}`)?.value ?? NaN),
    }));
  const panels = [
    {
      title: 'demo: measured frames',
      series: byCodec(measured.map((m) => ({ setting: m.setting, value: m.upBytes + m.downBytes }))),
      xLabels: ['H=1', 'H=4', 'H=16'],
    },
    ...computed.slice(1).map((c) => ({
      title: c.model,
      series: byCodec(c.rows.map((r) => ({ setting: r.setting, value: r.bytes }))),
      xLabels: ['H=1', 'H=4', 'H=16'],
    })),
  ];
  writeFigure(
    dir,
    'bandwidth-bytes',
    lineChartSvg({
      title: 'LoRA bytes per step per worker (up + down, log scale)',
      panels,
      xAxis: 'local steps H',
      yAxis: 'bytes',
      logY: true,
    }),
  );
  writeFigure(
    dir,
    'bandwidth-quality',
    lineChartSvg({
      title: 'demo task: eval loss after the same samples',
      xAxis: 'local steps H',
      yAxis: 'eval loss',
      panels: [
        {
          title: 'eval loss (mean token NLL)',
          series: byCodec(measured.map((m) => ({ setting: m.setting, value: m.evalLoss }))),
          xLabels: ['H=1', 'H=4', 'H=16'],
        },
      ],
    }),
  );
}

function table(
  r: { date: string; machine: Machine; samples: number; command: string },
  measured: MeasuredRow[],
  computed: {
    model: string;
    loraParameters: number;
    modelParameters: number;
    fp32LoraBytes: number;
    fullFineTuneBytes: number;
    rows: { setting: string; bytes: number; vsFp32Lora: number }[];
  }[],
): string {
  const ref = measured.find((m) => m.codec === 'f32' && m.H === 1) ?? measured[0];
  const lines = [
    `${provenance(r.date, r.command, r.machine)} Demo task, ${WORKERS} local workers, ` +
      `${r.samples} × ${DEMO_TRAIN.globalBatch} samples per setting ` +
      `(H=1: ${r.samples} steps; H: ${r.samples}/H outer steps, ` +
      `outer lr ${OUTER.outerLr}, momentum ${OUTER.outerMomentum}). ` +
      'Bytes are per synchronous-step equivalent per worker when each worker computes one micro-batch per step ' +
      '(global batch = workers × micro-batch: one result up, one parameter version down), ' +
      'every WebSocket frame counted with its header; ' +
      '"data down" is the micro-batch frames (token ids and loss masks), which no codec touches.',
    '',
    '| setting | up | params down | × fewer than f32 H=1 | overhead up / down | data down | eval loss | vs f32 ' +
      '| exact match | factor gap |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...measured.map(
      (m) =>
        `| ${m.setting} | ${fmt(m.upBytes)} | ${fmt(m.downBytes)} ` +
        `| ${((ref.upBytes + ref.downBytes) / (m.upBytes + m.downBytes)).toFixed(1)}× ` +
        `| ${pct(m.upOverhead - 1)} / ${pct(m.downOverhead - 1)} | ${fmt(m.dataBytes)} | ${m.evalLoss.toFixed(4)} ` +
        `| ${m.evalLoss >= ref.evalLoss ? '+' : ''}${pct(m.evalLoss / ref.evalLoss - 1)} | ${pct(m.exactMatch)} ` +
        `| ${m.factorGap === null ? '–' : m.factorGap.toFixed(3)} |`,
    ),
    '',
    'Computed from real adapter shapes (payload by codec + the per-frame overhead measured above), ' +
      'LoRA bytes up + down per step per worker:',
    '',
    `| model | LoRA params | ${computed[0].rows.map((x) => x.setting).join(' | ')} | full fine-tuning |`,
    `|---|---:|${computed[0].rows.map(() => '---:').join('|')}|---:|`,
    ...computed.map(
      (c) =>
        `| ${c.model} | ${c.loraParameters.toLocaleString('en-US')} ` +
        `| ${c.rows.map((x) => fmt(x.bytes)).join(' | ')} | ${fmt(c.fullFineTuneBytes)} |`,
    ),
    '',
    '![bytes](results/bandwidth-bytes.png) ![quality](results/bandwidth-quality.png)',
  ];
  return lines.join('\n');
}

if (process.argv[1]?.endsWith('bandwidth.ts')) {
  const r = await runBandwidthBench(cliFlags());
  console.log(JSON.stringify((r as { targets: unknown }).targets, null, 2));
  process.exit(0);
}
