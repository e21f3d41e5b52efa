// The analysis commands end to end as a user runs them (`tsx coordinator/cli.ts …` in a child
// process) on a tiny model with the demo alphabet: sweep --quick trains and analyses 5 adapters,
// analyze reads one adapter (with the base model) and a pair, extract recovers a known low-rank
// difference; every JSON number is in range, every figure is an SVG plus a real PNG, and bad input
// exits non-zero with its error code.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Matrix } from 'ml-matrix';
import { encodeSafetensors } from '../../shared/formats/safetensors.ts';
import { encodePeftAdapter, peftAdapterConfig } from '../../shared/formats/peft.ts';
import { checkLoraConfig, type LlamaConfig } from '../../shared/config.ts';
import { randomOrthonormal } from '../../shared/analysis/svd.ts';
import { Rng } from '../../shared/rng.ts';
import { randomArrays, writeTinyModelDir } from '../helpers/tiny-model.ts';

const repo = fileURLToPath(new URL('../..', import.meta.url));
let root = '';
let modelDir = '';
let sweepDir = '';
let config: LlamaConfig;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-analysis-'));
  modelDir = join(root, 'model');
  sweepDir = join(root, 'sweep');
  config = writeTinyModelDir(modelDir, 3) as LlamaConfig;
});
after(() => rmSync(root, { recursive: true, force: true }));
const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'coordinator/cli.ts', ...args], {
    cwd: repo,
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(...args: string[]): string {
  const r = cli(...args);
  assert.equal(r.status, 0, `loramesh ${args.join(' ')} exited ${r.status}:\n${r.stderr.slice(-2000)}`);
  return r.stdout;
}

const json = (path: string) => JSON.parse(readFileSync(path, 'utf8'));

function assertFigure(dir: string, name: string): void {
  assert.match(readFileSync(join(dir, `${name}.svg`), 'utf8'), /^<svg /, `${name}.svg`);
  const png = readFileSync(join(dir, `${name}.png`));
  assert.deepEqual([...png.subarray(0, 8)], PNG_SIGNATURE, `${name}.png signature`);
  assert.ok(png.length > 2000, `${name}.png is ${png.length} bytes`);
}

const inRange = (x: unknown, lo: number, hi: number, what: string) =>
  assert.ok(typeof x === 'number' && x >= lo && x <= hi, `${what} = ${x}, expected a number in [${lo}, ${hi}]`);

test(
  'sweep --quick trains 2 ranks × 2 target sets (+ a second seed) ' + 'and writes sweep.json, table.md and figures',
  () => {
    const started = performance.now();
    ok('sweep', '--quick', '--model', modelDir, '--out', sweepDir);
    const sweep = json(join(sweepDir, 'sweep.json'));
    assert.deepEqual(
      sweep.runs.map((r: { runId: string }) => r.runId),
      ['r2-q', 'r4-q', 'r2-q-v', 'r4-q-v', 'r4-q-v-seed8'],
    );
    for (const run of sweep.runs) {
      inRange(run.exactMatch, 0, 1, `${run.runId} exact match`);
      inRange(run.evalLoss, 1e-6, 100, `${run.runId} eval loss`);
      inRange(run.evalLossBefore, 1e-6, 100, `${run.runId} eval loss before`);
      for (const v of Object.values(run.analysis.entropyRank)) inRange(v, 0, run.rank, `${run.runId} entropy rank`);
      for (const v of Object.values(run.analysis.amplification)) inRange(v, 1e-6, 1e6, `${run.runId} amplification`);
    }
    const phi = sweep.subspace['subspace-r2-vs-r4'];
    assert.equal(phi.length, 2 * config.num_hidden_layers, 'q and v of every layer');
    for (const m of phi) for (const k of ['top1', 'top1InAll', 'all']) inRange(m[k], 0, 1, `${m.module} φ ${k}`);
    assert.match(readFileSync(join(sweepDir, 'table.md'), 'utf8'), /\| q\+v \| [\d.]+% \| [\d.]+% \|/);
    assertFigure(sweepDir, 'sweep-exact-match');
    assertFigure(join(sweepDir, 'subspace-r2-vs-r4'), 'subspace');
    assertFigure(join(sweepDir, 'subspace-r4-seeds'), 'subspace');
    assertFigure(join(sweepDir, 'analysis', 'r4-q-v'), 'spectra');
    assertFigure(join(sweepDir, 'analysis', 'r4-q-v'), 'amplification');
    console.log(`sweep --quick: ${((performance.now() - started) / 1000).toFixed(1)} s`);
  },
);

test(
  'analyze ADAPTER --model: spectra, effective ranks and amplification per module; ' +
    'analyze A B: φ in [0, 1], 1 for an adapter with itself',
  () => {
    const adapter = join(sweepDir, 'runs', 'r4-q-v');
    const out = join(root, 'one');
    const stdout = ok('analyze', adapter, '--model', modelDir, '--out', out);
    assert.match(stdout, /amplification/);
    const report = json(join(out, 'analysis.json'));
    assert.equal(report.r, 4);
    assert.equal(report.modules.length, 2 * config.num_hidden_layers);
    for (const m of report.modules) {
      assert.equal(m.spectrum.singularValues.length, 4);
      inRange(m.spectrum.entropyRank, 1, 4, `${m.module} entropy rank`);
      inRange(m.spectrum.energyRank90, 1, 4, `${m.module} 90% energy rank`);
      inRange(m.spectrum.topShares.top1, 0.25, 1, `${m.module} top-1 share`);
      inRange(m.amplification.factor, 1e-6, 1e6, `${m.module} amplification`);
      inRange(
        m.amplification.projectedOnWeight,
        m.amplification.projectedOnRandom,
        m.amplification.weightNorm,
        `${m.module} ‖UᵀWV‖ on W's top directions`,
      );
    }
    assertFigure(out, 'spectra');
    assertFigure(out, 'amplification');

    const pair = join(root, 'pair');
    ok('analyze', join(sweepDir, 'runs', 'r2-q-v'), adapter, '--out', pair);
    const sub = json(join(pair, 'subspace.json'));
    assert.deepEqual(sub.r, [2, 4]);
    for (const m of sub.modules) {
      assert.equal(m.phi.length, 2);
      assert.equal(m.phi[0].length, 4);
      for (const row of m.phi) for (const v of row) inRange(v, 0, 1, `${m.module} φ`);
    }
    assertFigure(pair, 'subspace');
    assertFigure(pair, 'subspace-zoom');
    const self = join(root, 'self');
    ok('analyze', adapter, adapter, '--out', self);
    for (const m of json(join(self, 'subspace.json')).modules)
      m.phi.forEach((row: number[], i: number) =>
        assert.ok(Math.abs(row[i] - 1) < 1e-6, `${m.module} φ(${i + 1}, ${i + 1}) = ${row[i]}`),
      );
  },
);

test(
  'extract recovers a rank-2 difference exactly at rank 2, ' +
    'with error σ₂ at rank 1, and names what LoRA cannot carry',
  () => {
    // A tuned model: base + a known rank-2 ΔW on every q_proj (σ = 3, 1.5), and one changed norm.
    const rng = new Rng(11);
    const arrays = randomArrays(config, 3, 0.2);
    const tunedDir = join(root, 'tuned');
    mkdirSync(tunedDir);
    for (const f of ['config.json', 'vocab.json']) writeFileSync(join(tunedDir, f), readFileSync(join(modelDir, f)));
    const d = config.hidden_size;
    for (let layer = 0; layer < config.num_hidden_layers; layer++) {
      const delta = randomOrthonormal(d, 2, () => rng.normal())
        .mmul(Matrix.diag([3, 1.5]))
        .mmul(randomOrthonormal(d, 2, () => rng.normal()).transpose());
      const w = arrays.get(`model.layers.${layer}.self_attn.q_proj.weight`)!;
      w.data = w.data.map((x, i) => x + delta.get(Math.floor(i / d), i % d));
    }
    arrays.get('model.norm.weight')!.data[0] += 0.5;
    writeFileSync(join(tunedDir, 'model.safetensors'), encodeSafetensors(Object.fromEntries(arrays)));
    for (const [rank, expectedError] of [
      [2, 0],
      [1, 1.5],
    ] as const) {
      const out = join(root, `extracted-r${rank}`);
      const stdout = ok(
        'extract',
        '--base',
        modelDir,
        '--tuned',
        tunedDir,
        '--rank',
        String(rank),
        '--targets',
        'q_proj',
        '--out',
        out,
      );
      assert.match(stdout, /model\.norm\.weight/);
      const report = json(join(out, 'extract_report.json'));
      assert.equal(report.modules.length, config.num_hidden_layers);
      for (const m of report.modules) {
        assert.ok(Math.abs(m.deltaNorm - Math.hypot(3, 1.5)) < 1e-4, `${m.module} ‖ΔW‖ ${m.deltaNorm}`);
        // The base weights are float32, so W_tuned − W_base carries ~1e-7 of rounding.
        assert.ok(
          Math.abs(m.error - expectedError) < 1e-4 * Math.hypot(3, 1.5),
          `${m.module} rank ${rank}: error ${m.error}, expected ${expectedError}`,
        );
      }
      assert.deepEqual(
        report.notCarried.map((n: { tensor: string }) => n.tensor),
        ['model.norm.weight'],
      );
      assert.equal(json(join(out, 'adapter_config.json')).r, rank);
      // The extracted adapter is an ordinary adapter: analyze reads it back with the same singular values.
      ok('analyze', out, '--model', modelDir, '--out', join(out, 'analysis'));
      const back = json(join(out, 'analysis', 'analysis.json')).modules[0].spectrum.singularValues;
      assert.ok(Math.abs(back[0] - 3) < 1e-4, `σ₁ read back ${back[0]}`);
    }
  },
);

test('bad input exits non-zero with a coded error naming the problem', () => {
  const missing = cli('analyze', join(root, 'no-such-adapter'));
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /LM_ERR_MODEL: adapter .*no-such-adapter: not a directory/);

  // The same module path with another d_in than the tiny model's.
  const lora = checkLoraConfig({ r: 2, targetModules: ['q_proj'] });
  const odd = join(root, 'odd-adapter');
  mkdirSync(odd);
  const module = {
    A: new Float32Array(2 * 24),
    B: new Float32Array(16 * 2).fill(1),
    aShape: [2, 24] as [number, number],
    bShape: [16, 2] as [number, number],
  };
  writeFileSync(
    join(odd, 'adapter_model.safetensors'),
    encodePeftAdapter(new Map([['model.layers.0.self_attn.q_proj', module]])),
  );
  writeFileSync(join(odd, 'adapter_config.json'), JSON.stringify(peftAdapterConfig(lora, 'x')));
  const mismatch = cli('analyze', join(sweepDir, 'runs', 'r2-q'), odd, '--out', join(root, 'mismatch'));
  assert.equal(mismatch.status, 2);
  assert.match(mismatch.stderr, /LM_ERR_SHAPE: model\.layers\.0\.self_attn\.q_proj: .* has ΔW 16×16 but .* has 16×24/);

  module.A[5] = NaN;
  writeFileSync(
    join(odd, 'adapter_model.safetensors'),
    encodePeftAdapter(new Map([['model.layers.0.self_attn.q_proj', module]])),
  );
  const nonFinite = cli('analyze', odd);
  assert.equal(nonFinite.status, 2);
  assert.match(nonFinite.stderr, /LM_ERR_NON_FINITE: .*q_proj\.lora_A\[0, 5\] is NaN/);

  const tooHigh = cli(
    'extract',
    '--base',
    modelDir,
    '--tuned',
    join(root, 'tuned'),
    '--rank',
    '17',
    '--targets',
    'q_proj',
    '--out',
    join(root, 'never'),
  );
  assert.equal(tooHigh.status, 2);
  assert.match(
    tooHigh.stderr,
    /LM_ERR_CONFIG: --rank 17 for model\.layers\.0\.self_attn\.q_proj \(16×16\): expected an integer in \[1, 16\]/,
  );
});
