// resumeShape (`train --resume`): run_config.json defines the run. Flags that repeat it are accepted,
// every contradiction is named in one LM_ERR_CONFIG error, --steps may only be raised, --adapter /
// --run-id / --out never go with --resume, deployment flags are free, and the settings an older
// run_config.json lacks (checkpointEvery, aggregation) come from the flags.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkRunShape,
  flagsOf,
  resumeShape,
  runShapeFrom,
  type RunShape,
} from '../../../coordinator/cli/resume-flags.ts';
import { checkLoraConfig, checkTrainConfig } from '../../../shared/config.ts';
import { ErrorCodes, LoraMeshError } from '../../../shared/errors.ts';

const RUN_DIR = 'runs/r1';

/** A run as run_config.json stores it (and as the CLI's flags rebuild it): demo data, f32 wire, no local steps. */
function demoRun(overrides: Partial<RunShape> = {}): RunShape {
  return {
    model: '/models/tiny',
    data: { kind: 'demo', trainSize: 64, seed: 5 },
    lora: checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] }),
    train: checkTrainConfig({ steps: 6, globalBatch: 8, microBatch: 2, lr: 0.01, warmupSteps: 3, seed: 5 }),
    wire: { up: { name: 'f32' }, down: { name: 'f32' } },
    checkpointEvery: 4,
    aggregation: 'sum',
    arithmetic: 'simd128',
    ...overrides,
  };
}

/** A jsonl run with int8 codecs and local steps: every run-defining part set. */
function fullRun(): RunShape {
  return demoRun({
    data: { kind: 'jsonl', path: '/data/chat.jsonl', maxTokens: 64, pack: true, evalFraction: 0.1, seed: 5 },
    wire: { up: { name: 'int8', blockSize: 32 }, down: { name: 'int8', blockSize: 32 } },
    local: { steps: 4, innerLr: 0.02, outerLr: 0.7, outerMomentum: 0.9 },
    aggregation: 'median',
    baseFormat: { format: 'nf4', blockSize: 32, doubleQuant: true, doubleQuantBlockSize: 256 },
    arithmetic: 'relaxed-fma',
  });
}

const withSteps = (run: RunShape, steps: number, lr = run.train.lr): RunShape => ({
  ...run,
  train: { ...run.train, steps, lr },
});

/** resumeShape with `typed` as the option keys given on the command line. */
const resume = (stored: RunShape, fromFlags: RunShape, ...typed: string[]) =>
  resumeShape(stored, flagsOf(fromFlags), new Set(typed), RUN_DIR);

/** The one-line message of the LM_ERR_CONFIG error resumeShape refuses with. */
function refusal(stored: RunShape, fromFlags: RunShape, ...typed: string[]): string {
  try {
    resume(stored, fromFlags, ...typed);
  } catch (err) {
    assert.ok(err instanceof LoraMeshError, `expected a LoraMeshError, got ${err}`);
    assert.equal(err.code, ErrorCodes.CONFIG);
    assert.ok(!err.message.includes('\n'), `one line: ${err.message}`);
    assert.match(err.message, /^LM_ERR_CONFIG: --resume runs\/r1: /);
    assert.match(err.message, /\. Run-defining settings come from run_config\.json; leave these flags out$/);
    return err.message;
  }
  assert.fail(`typed ${typed.join(', ')}: expected a refusal`);
}

/** Every option key that sets a run-defining part of a demo run (jsonl-only keys left out). */
const DEMO_RUN_KEYS = [
  'model',
  'trainSize',
  'globalBatch',
  'microBatch',
  'lr',
  'warmup',
  'weightDecay',
  'clip',
  'seed',
  'rank',
  'alpha',
  'dropout',
  'targets',
  'init',
  'rslora',
  'codec',
  'codecUp',
  'codecDown',
  'localSteps',
  'checkpointEvery',
  'aggregation',
  'arithmetic',
  'steps',
];
const FULL_RUN_KEYS = [
  ...DEMO_RUN_KEYS.filter((k) => k !== 'trainSize'),
  'data',
  'maxTokens',
  'pack',
  'evalFraction',
  'codecBlock',
  'innerLr',
  'outerLr',
  'outerMomentum',
  'baseFormat',
  'baseBlock',
  'baseDoubleQuant',
];

test('flags repeating the run are accepted and the stored run comes back unchanged', () => {
  const stored = demoRun();
  assert.deepEqual(resume(stored, structuredClone(stored), ...DEMO_RUN_KEYS), stored);
  assert.deepEqual(resume(stored, structuredClone(stored)), stored, 'no flags at all');
  // With every parent flag typed too (--data, --codec, --local-steps), the dependent ones repeat fine.
  const full = fullRun();
  assert.deepEqual(resume(full, structuredClone(full), ...FULL_RUN_KEYS), full);
});

test('flags not typed are ignored, whatever their defaults say', () => {
  const stored = fullRun();
  // The CLI's defaults for a new run differ from the stored run in almost every part.
  const defaults = demoRun({
    lora: checkLoraConfig({}),
    train: checkTrainConfig({}),
    checkpointEvery: 25,
    aggregation: 'sum',
  });
  assert.deepEqual(resume(stored, defaults), stored);
});

test('deployment flags may change freely', () => {
  const stored = demoRun();
  const deployment = [
    'host',
    'port',
    'token',
    'localWorkers',
    'minWorkers',
    'maxConnections',
    'heartbeatMs',
    'spotCheck',
    'outlierFactor',
    'maxRejects',
    'backend',
    'keepCheckpoints',
    'evalEvery',
    'resume',
  ];
  assert.deepEqual(resume(stored, structuredClone(stored), ...deployment), stored);
});

test('every contradicting flag is named, with both values, in one LM_ERR_CONFIG error', () => {
  const stored = demoRun();
  const flags = demoRun({
    lora: { ...stored.lora, r: 8, targetModules: ['q_proj', 'k_proj'] },
    train: { ...stored.train, lr: 0.5, seed: 7 },
    aggregation: 'median',
    checkpointEvery: 10,
  });
  const typed = ['rank', 'lr', 'seed', 'targets', 'aggregation', 'checkpointEvery', 'alpha', 'microBatch'];
  const message = refusal(stored, flags, ...typed);
  for (const part of [
    "--rank 8 contradicts the run's 4",
    "--lr 0.5 contradicts the run's 0.01",
    "--seed 7 contradicts the run's 5",
    `--targets ["q_proj","k_proj"] contradicts the run's ["q_proj","v_proj"]`,
    `--aggregation "median" contradicts the run's "sum"`,
    "--checkpoint-every 10 contradicts the run's 4",
  ])
    assert.ok(message.includes(part), `names ${JSON.stringify(part)}: ${message}`);
  // --alpha and --micro-batch repeat the run: not named.
  assert.doesNotMatch(message, /--alpha|--micro-batch/);
});

test('contradicting data, codec and local-steps flags are named', () => {
  const flags = demoRun({
    data: { kind: 'jsonl', path: '/data/other.jsonl', maxTokens: 128, pack: false, evalFraction: 0.1, seed: 5 },
    wire: { up: { name: 'f32' }, down: { name: 'int8', blockSize: 32 } },
    local: { steps: 2, innerLr: 0.02, outerLr: 0.5, outerMomentum: 0.9 },
  });
  const typed = ['data', 'maxTokens', 'pack', 'evalFraction', 'codecUp', 'codecDown', 'localSteps', 'outerLr'];
  const message = refusal(fullRun(), flags, ...typed);
  assert.equal(message.match(/ contradicts /g)?.length, 6, message);
  for (const part of [
    `--data "/data/other.jsonl" contradicts the run's "/data/chat.jsonl"`,
    "--max-tokens 128 contradicts the run's 64",
    "--pack false contradicts the run's true",
    `--codec-up {"name":"f32"} contradicts the run's {"name":"int8","blockSize":32}`,
    "--local-steps 2 contradicts the run's 4",
    "--outer-lr 0.5 contradicts the run's 0.7",
  ])
    assert.ok(message.includes(part), `names ${JSON.stringify(part)}: ${message}`);
  // --local-steps 0 on a run with local steps, and --local-steps on a synchronous run, both contradict.
  assert.match(refusal(fullRun(), demoRun(), 'localSteps'), /--local-steps 0 contradicts the run's 4/);
  assert.match(refusal(demoRun(), fullRun(), 'localSteps'), /--local-steps 4 contradicts the run's 0/);
});

test('a contradicting base format flag is named (a run without one is float32, as older runs are)', () => {
  const int8 = demoRun({ baseFormat: { format: 'int8', blockSize: 64 } });
  assert.deepEqual(resume(int8, structuredClone(int8), 'baseFormat', 'baseBlock'), int8);
  assert.match(
    refusal(int8, demoRun({ baseFormat: { format: 'int8', blockSize: 32 } }), 'baseBlock'),
    /--base-block 32 contradicts the run's 64/,
  );
  assert.match(
    refusal(int8, demoRun({ baseFormat: { format: 'nf4', blockSize: 64, doubleQuant: false } }), 'baseFormat'),
    /--base-format "nf4" contradicts the run's "int8"/,
  );
  assert.match(refusal(demoRun(), fullRun(), 'baseFormat'), /--base-format "nf4" contradicts the run's unset/);
  const nf4 = demoRun({ baseFormat: { format: 'nf4', blockSize: 32, doubleQuant: false } });
  assert.match(refusal(nf4, fullRun(), 'baseDoubleQuant'), /--base-double-quant true contradicts the run's unset/);
});

test('--arithmetic is kept on resume: a contradicting one is named; an older run_config.json without it is simd128', () => {
  const relaxed = demoRun({ arithmetic: 'relaxed-fma' });
  assert.deepEqual(resume(relaxed, structuredClone(relaxed), 'arithmetic'), relaxed);
  assert.match(refusal(relaxed, demoRun(), 'arithmetic'), /--arithmetic "simd128" contradicts the run's "relaxed-fma"/);
  const older = demoRun();
  delete older.arithmetic;
  assert.equal(resume(older, demoRun(), 'arithmetic').arithmetic, undefined); // simd128 typed: the same run
  assert.match(refusal(older, relaxed, 'arithmetic'), /--arithmetic "relaxed-fma" contradicts the run's "simd128"/);
  assert.equal(checkRunShape(JSON.parse(JSON.stringify(older)), 'run_config.json').arithmetic, undefined);
});

test('--base-format and its options become one checked spec; an option that does not apply is refused by name', () => {
  const flags = flagsOf(demoRun());
  assert.deepEqual(runShapeFrom({ ...flags, baseFormat: 'int8' }).baseFormat, { format: 'int8', blockSize: 64 });
  assert.deepEqual(runShapeFrom({ ...flags, baseFormat: 'nf4', baseBlock: 128, baseDoubleQuant: true }).baseFormat, {
    format: 'nf4',
    blockSize: 128,
    doubleQuant: true,
    doubleQuantBlockSize: 256,
  });
  assert.equal(runShapeFrom(flags).baseFormat, undefined, 'no --base-format: float32');
  const refused = (extra: Record<string, unknown>, message: RegExp) =>
    assert.throws(
      () => runShapeFrom({ ...flags, ...extra }),
      (err: LoraMeshError) => err.code === ErrorCodes.CONFIG && message.test(err.message),
      JSON.stringify(extra),
    );
  refused(
    { baseFormat: 'f16', baseBlock: 32 },
    /^LM_ERR_CONFIG: --base-block applies only to int8 and nf4, got 32 for f16$/,
  );
  refused({ baseFormat: 'int8', baseDoubleQuant: true }, /--base-double-quant applies only to nf4, got true for int8/);
  refused(
    { baseFormat: 'int8', baseBlock: 6 },
    /--base-block should be a multiple of 4 in \[4, 65536\] for int8, got 6/,
  );
  refused({ baseBlock: 32 }, /--base-block needs --base-format int8 or nf4/);
  refused({ baseDoubleQuant: true }, /--base-double-quant needs --base-format int8 or nf4/);
});

test('--steps may be raised (extending the run) or repeated, not lowered', () => {
  const stored = demoRun();
  const raised = resume(stored, withSteps(stored, 9), 'steps');
  assert.equal(raised.train.steps, 9);
  assert.deepEqual(withSteps(raised, 6), stored, 'nothing else changes');
  assert.equal(stored.train.steps, 6, 'the stored run is not modified');

  assert.equal(resume(stored, structuredClone(stored), 'steps').train.steps, 6);
  // An untyped --steps (the CLI default of 100) changes nothing.
  assert.equal(resume(stored, withSteps(stored, 100)).train.steps, 6);

  assert.match(
    refusal(stored, withSteps(stored, 3), 'steps'),
    /: --steps 3 is below the run's 6 \(steps may only be raised\)\./,
  );
  // A lowered --steps is reported beside the other contradictions, in the same error.
  assert.match(
    refusal(stored, withSteps(stored, 3, 1), 'steps', 'lr'),
    /--lr 1 contradicts the run's 0\.01; --steps 3 is below the run's 6/,
  );
});

test('--adapter, --run-id and --out are refused with --resume, each named', () => {
  const stored = demoRun();
  for (const [key, flag] of [
    ['adapter', '--adapter'],
    ['runId', '--run-id'],
    ['out', '--out'],
  ]) {
    const alone = refusal(stored, structuredClone(stored), key);
    assert.match(alone, new RegExp(`: ${flag} \\(.*\\) cannot be combined with --resume\\.`));
  }
  const all = refusal(stored, structuredClone(stored), 'adapter', 'runId', 'out');
  assert.match(
    all,
    /--adapter .* cannot be combined with --resume; --run-id .* cannot be combined with --resume; --out .* cannot/,
  );
});

test('an older run_config.json without checkpointEvery or aggregation takes them from the flags', () => {
  const older = demoRun();
  delete older.checkpointEvery;
  delete older.aggregation;
  // Typed: taken as given, not a contradiction.
  const flags = demoRun({ checkpointEvery: 10, aggregation: 'median' });
  const typed = resume(older, flags, 'checkpointEvery', 'aggregation');
  assert.equal(typed.checkpointEvery, 10);
  assert.equal(typed.aggregation, 'median');
  // Not typed: the flags' defaults.
  const defaults = resume(older, demoRun({ checkpointEvery: 25, aggregation: 'sum' }));
  assert.equal(defaults.checkpointEvery, 25);
  assert.equal(defaults.aggregation, 'sum');
  // Other settings absent from the stored run are not filled in that way: they still contradict.
  assert.match(refusal(older, fullRun(), 'innerLr'), /--inner-lr 0\.02 contradicts the run's unset/);
});

test(
  "a dependent flag repeating the run is read with the run's own parent flags " +
    '(the CLI defaults say f32, no local steps, demo data)',
  () => {
    const stored = fullRun();
    const cliDefaults = flagsOf(demoRun()); // --data, --codec, --local-steps not typed
    const repeat = {
      codecBlock: 32,
      innerLr: 0.02,
      outerLr: 0.7,
      outerMomentum: 0.9,
      maxTokens: 64,
      pack: true,
      evalFraction: 0.1,
    };
    for (const [key, value] of Object.entries(repeat)) {
      assert.deepEqual(resumeShape(stored, { ...cliDefaults, [key]: value }, new Set([key]), RUN_DIR), stored, key);
    }
    const message = (() => {
      try {
        resumeShape(
          stored,
          { ...cliDefaults, codecBlock: 16, innerLr: 0.5 },
          new Set(['codecBlock', 'innerLr']),
          RUN_DIR,
        );
      } catch (err) {
        return (err as Error).message;
      }
      return '';
    })();
    assert.match(message, /--codec-block .*16.* contradicts/);
    assert.match(message, /--inner-lr .*0\.5.* contradicts/);
  },
);

test("flagsOf is runShapeFrom's inverse for stored runs", () => {
  for (const run of [demoRun(), fullRun()]) assert.deepEqual(runShapeFrom(flagsOf(run)), run);
});

test(
  'run_config.json is checked field by field on --resume: ' +
    'a valid one comes back as it is, a damaged field is named',
  () => {
    for (const run of [demoRun(), fullRun()])
      assert.deepEqual(checkRunShape(JSON.parse(JSON.stringify(run)), 'run_config.json'), run);
    const damaged: [string, (r: any) => void, RegExp][] = [
      ['lora.r', (r) => (r.lora.r = 0), /run_config\.json: lora: .*r/],
      ['train.lr', (r) => (r.train.lr = 'fast'), /run_config\.json: train: .*lr/],
      ['wire.up', (r) => (r.wire.up = { name: 'int4' }), /run_config\.json: wire\.up: .*int4/],
      [
        'data.kind',
        (r) => (r.data = { kind: 'csv' }),
        /run_config\.json: data\.kind should be "jsonl" or "demo", got "csv"/,
      ],
      [
        'local.steps',
        (r) => (r.local = { steps: 0, innerLr: 1, outerLr: 1, outerMomentum: 0 }),
        /run_config\.json: local\.steps should be an integer ≥ 1, got 0/,
      ],
      ['aggregation', (r) => (r.aggregation = 'mean'), /run_config\.json: aggregation should be one of sum, /],
      [
        'arithmetic',
        (r) => (r.arithmetic = 'fma'),
        /run_config\.json: arithmetic should be one of simd128, relaxed-fma, got "fma"/,
      ],
      [
        'baseFormat',
        (r) => (r.baseFormat = { format: 'int8', blockSize: 3 }),
        /run_config\.json: baseFormat\.blockSize should be a multiple of 4/,
      ],
      ['model', (r) => delete r.model, /run_config\.json: model should be a model directory, got undefined/],
    ];
    for (const [what, damage, message] of damaged) {
      const raw = JSON.parse(JSON.stringify(demoRun()));
      damage(raw);
      assert.throws(
        () => checkRunShape(raw, 'run_config.json'),
        (err: LoraMeshError) => err.code === ErrorCodes.CONFIG && message.test(err.message),
        what,
      );
    }
    assert.throws(() => checkRunShape([], 'run_config.json'), /the file should be a JSON object|model should be/);
  },
);

test(
  'a typed batch flag that repeats the run is read against the run, ' + 'not the CLI defaults (global 12, micro 4)',
  () => {
    const stored = demoRun({
      train: checkTrainConfig({ steps: 6, globalBatch: 12, microBatch: 4, lr: 0.01, warmupSteps: 3, seed: 5 }),
    });
    const cliDefaults = flagsOf(demoRun()); // micro-batch 2 there; the CLI's own default is 8
    assert.deepEqual(
      resumeShape(stored, { ...cliDefaults, microBatch: 8, globalBatch: 12 }, new Set(['globalBatch']), RUN_DIR),
      stored,
    );
  },
);
