/**
 * `npm run bench:attacks`: a token holder that lies, on the demo task (demo model and LoRA, seed 0,
 * 3 local workers, one of them the attacker), with the default defence and without it:
 *   huge:1e30    every gradient value 1e30, answered at once (finite, passes a finiteness check)
 *   huge:3e38    every value 3e38: two of them overflow a float32 sum
 *   byzantine:1  the honest gradient negated (normal size)
 * Each against the same run without the attacker (in-process: the mesh equals it bit for bit).
 * Prints and records final eval loss, whether the adapter is finite, rejections and quarantines,
 * wall time; writes bench/results/attacks.json and its section of bench/RESULTS.md.
 * About 8 minutes on 2 cores; --quick runs 40 steps and writes only attacks.quick.json.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../node/backend.ts';
import { toExample } from '../shared/data/demo-tasks.ts';
import { demoExamples, demoTaskData } from '../coordinator/io/dataset.ts';
import { DEMO_LORA, DEMO_TRAIN } from '../coordinator/commands/demo.ts';
import { openModelDir } from '../coordinator/io/model-dir.ts';
import { DEMO_MODEL_DIR } from '../coordinator/io/paths.ts';
import type { DefenceConfig } from '../coordinator/engine/defence.ts';
import type { Deployment, RunConfigInput } from '../coordinator/run/run-config.ts';
import { runTraining, type RunOptions, type RunResult } from '../coordinator/run/train.ts';
import { cliFlags, provenance, replaceSection, writeJson } from './lib/results.ts';

const { quick, write } = cliFlags();
await initBackend('wasm');
const root = mkdtempSync(join(tmpdir(), 'loramesh-bench-attacks-'));
const model = await openModelDir(DEMO_MODEL_DIR);
const train = { ...DEMO_TRAIN, seed: 0, steps: quick ? 40 : DEMO_TRAIN.steps };
const data = demoTaskData(2000, 200, train.seed);
const base: Omit<RunOptions, 'config'> = {
  model,
  examples: demoExamples(model.tokenizer, data),
  evalExamples: data.eval.map((s) => toExample(model.tokenizer, s)),
  workerOutput: 'ignore',
  progress: false,
  log: () => {},
};
const config: RunConfigInput = {
  run: { lora: DEMO_LORA, train },
  deployment: {
    evalEvery: 100_000,
    outDir: join(root, 'runs'),
    backend: 'wasm',
    cacheDir: join(root, 'cache'),
    localWorkers: 3,
  },
};

interface Row {
  attack: string;
  defence: 'default' | 'off';
  evalLoss: number;
  vsClean: number;
  finite: boolean;
  rejections: Record<string, number>;
  quarantined: number;
  seconds: number;
  error?: string;
}

const finalEval = (r: RunResult) => r.evalLosses[r.evalLosses.length - 1].loss;
const OFF: Partial<DefenceConfig> = { spotCheck: 0, outlierFactor: 0, probation: 0 };

async function run(
  attack: string | null,
  defence: 'default' | 'off',
  deployment: Partial<Deployment> = {},
): Promise<RunResult> {
  return runTraining({
    ...base,
    config: {
      ...config,
      deployment: {
        ...config.deployment,
        ...deployment,
        runId: `${attack ?? 'clean'}-${defence}`.replace(/[^a-z0-9-]/gi, '_'),
      },
      limits: defence === 'off' ? { defence: OFF } : {},
    },
    workerEnv: (i): Record<string, string> => (attack && i === 0 ? { LORAMESH_FAULT: attack } : {}),
  });
}

let started = performance.now();
const clean = await run(null, 'default', { inProcess: true, localWorkers: 0 });
const cleanLoss = finalEval(clean);
console.log(
  `clean (in-process, = the mesh without attacker): eval loss ${cleanLoss.toFixed(4)} ` +
    `(start ${clean.evalLosses[0].loss.toFixed(4)}), ${((performance.now() - started) / 1000).toFixed(0)} s`,
);

const rows: Row[] = [];
for (const [attack, defence] of [
  ['huge:1e30', 'default'],
  ['huge:3e38', 'default'],
  ['byzantine:1', 'default'],
  ['huge:1e30', 'off'],
  ['byzantine:1', 'off'],
] as const) {
  started = performance.now();
  let row: Row;
  try {
    const r = await run(attack, defence);
    const loss = finalEval(r);
    row = {
      attack,
      defence,
      evalLoss: loss,
      vsClean: loss / cleanLoss - 1,
      finite: [...r.adapter.values()].every((v) => v.every(Number.isFinite)),
      rejections: r.rejections,
      quarantined: r.quarantined,
      seconds: (performance.now() - started) / 1000,
    };
  } catch (err) {
    row = {
      attack,
      defence,
      evalLoss: NaN,
      vsClean: NaN,
      finite: false,
      rejections: {},
      quarantined: 0,
      seconds: (performance.now() - started) / 1000,
      error: (err as Error).message,
    };
  }
  rows.push(row);
  console.log(
    `${attack.padEnd(12)} defence ${defence.padEnd(7)}: eval loss ${row.evalLoss.toFixed(4)} ` +
      `(${(100 * row.vsClean).toFixed(2)} % vs clean), adapter ${row.finite ? 'finite' : 'NOT finite'}, ` +
      `rejections ${JSON.stringify(row.rejections)}, quarantined ${row.quarantined}, ${row.seconds.toFixed(0)} s` +
      `${row.error ? `, error ${row.error}` : ''}`,
  );
}
rmSync(root, { recursive: true, force: true });

const date = new Date().toISOString();
const result = { date, quick, steps: train.steps, seed: train.seed, workers: 3, cleanEvalLoss: cleanLoss, rows };
writeJson(quick ? 'attacks.quick' : 'attacks', result);
if (write && !quick) {
  const pct = (x: number) => (Number.isFinite(x) ? `${x >= 0 ? '+' : ''}${(100 * x).toFixed(2)} %` : '–');
  replaceSection(
    'attacks-table',
    'A lying worker (`npm run bench:attacks`)',
    [
      provenance(date, 'npm run bench:attacks'),
      '',
      `Demo task and LoRA, seed 0, ${train.steps} steps × ${train.globalBatch} sequences, ` +
        '3 local workers of which one is the attacker; ' +
        `clean run (no attacker) eval loss ${cleanLoss.toFixed(4)}. ` +
        'Default defence: spot checks on 5 % of results and the first 2 of every connection, ' +
        "outlier screen at 10× the step's median norm, " +
        'overflow bound on result norms, finite-only updates. ' +
        '"off": `--spot-check 0 --probation 0 --outlier-factor 0` (the overflow bound and finite-only updates stay).',
      '',
      '| attack | defence | final eval loss | vs clean | adapter | rejected (by code) | quarantined | time |',
      '|---|---|---:|---:|---|---|---:|---:|',
      ...rows.map(
        (r) =>
          `| \`${r.attack}\` | ${r.defence} | ${r.evalLoss.toFixed(4)} | ${pct(r.vsClean)} | ` +
          `${r.finite ? 'finite' : `**not finite**${r.error ? ` (${r.error.slice(0, 80)})` : ''}`} | ${
            Object.entries(r.rejections)
              .map(([c, n]) => `${c} ${n}`)
              .join(', ') || '–'
          } | ${r.quarantined} | ${r.seconds.toFixed(0)} s |`,
      ),
    ].join('\n'),
  );
}
