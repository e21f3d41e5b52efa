// `loramesh train` as real processes on a tiny model: a run ends with a checkpoint of its last step and
// a `done:` line; --resume of a finished run does nothing; contradicting flags are refused in one line
// (exit 2); a raised --steps extends the run; one SIGINT while waiting for workers exits 130 at once;
// one SIGTERM mid-training saves the last whole step and exits 143, and --resume then ends with the same
// adapter as an uninterrupted in-process run, bit for bit, every step recorded once.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import '../helpers/backend.ts';
import { checkpointName } from '../../coordinator/io/checkpoint.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import { LOCK_FILE } from '../../coordinator/io/run-lock.ts';
import { runTraining, type RunResult } from '../../coordinator/run/train.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { decodePeftAdapter } from '../../shared/formats/peft.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

const root = mkdtempSync(join(tmpdir(), 'loramesh-resume-cli-'));
const cli = fileURLToPath(new URL('../../coordinator/cli.ts', import.meta.url));
const modelDir = join(root, 'model');
const runs = join(root, 'runs');
const train = ['--import', 'tsx', cli, 'train', '--backend', 'wasm', '--eval-every', '1000'];
const runFlags = (steps: number) => [
  '--rank',
  '4',
  '--alpha',
  '8',
  '--targets',
  'q_proj,v_proj',
  '--steps',
  String(steps),
  '--global-batch',
  '8',
  '--micro-batch',
  '2',
  '--lr',
  '0.01',
  '--warmup',
  '3',
  '--seed',
  '5',
  '--train-size',
  '64',
  '--model',
  modelDir,
  '--out',
  runs,
];
const cliEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env, LORAMESH_CACHE: join(root, 'cache'), ...extra };
  if (!extra.LORAMESH_FAULT) delete env.LORAMESH_FAULT;
  return env;
};

const children = new Set<ChildProcess>();
before(() => writeTinyModelDir(modelDir, 9));
after(() => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
});

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Starts the CLI; `finished` resolves when it exits (or after 120 s, killed). `stdout` grows as it prints. */
function start(args: string[], env = cliEnv()) {
  const child = spawn(process.execPath, [...train, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const out = { stdout: '', stderr: '' };
  child.stdout!.on('data', (b: Buffer) => (out.stdout += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (out.stderr += b.toString()));
  const finished = new Promise<Finished>((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, ...out });
    });
  });
  return { child, out, finished };
}
const runCli = (args: string[], env?: NodeJS.ProcessEnv) => start(args, env).finished;

/** Resolves once `check` holds (polled every 20 ms); rejects if the process exits first. */
function when(child: ChildProcess, check: () => boolean, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      if (check()) {
        clearInterval(timer);
        resolve();
      }
    }, 20);
    child.once('exit', (code) => {
      clearInterval(timer);
      reject(new Error(`the process exited (code ${code}) before ${what}`));
    });
  });
}

const jsonLines = (path: string) =>
  existsSync(path)
    ? readFileSync(path, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l))
    : [];
const lossLines = (dir: string) => jsonLines(join(dir, 'metrics.jsonl')).filter((l) => l.loss !== undefined);
const lossSteps = (dir: string) => lossLines(dir).map((l) => l.step as number);
const ledgerSteps = (dir: string) => jsonLines(join(dir, 'ledger.jsonl')).map((l) => l.step as number);
const oneTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);
const lastLine = (text: string) => text.trim().split('\n').at(-1) ?? '';

/** Largest |a − b| between the run folder's adapter_model.safetensors and a reference adapter. */
function maxAbsDiff(runDir: string, reference: RunResult): number {
  let diff = 0;
  for (const [path, m] of decodePeftAdapter(new Uint8Array(readFileSync(join(runDir, 'adapter_model.safetensors'))))) {
    for (const [which, data] of [
      ['A', m.A],
      ['B', m.B],
    ] as const) {
      const ref = reference.adapter.get(`${path}.lora_${which}`)!;
      assert.equal(data.length, ref.length, `${path}.lora_${which} length`);
      for (let i = 0; i < ref.length; i++) diff = Math.max(diff, Math.abs(ref[i] - data[i]));
    }
  }
  return diff;
}

const complete = join(runs, 'complete');

test('a complete run checkpoints its last step and ends with done:; --resume of it does nothing', async () => {
  const run = await runCli([...runFlags(6), '--local-workers', '2', '--checkpoint-every', '4', '--run-id', 'complete']);
  assert.equal(run.code, 0, run.stderr);
  assert.deepEqual(readdirSync(join(complete, 'checkpoints')).sort(), [checkpointName(4), checkpointName(6)]);
  const done = new RegExp(
    '^done: 6 steps, final loss \\d+\\.\\d{4}; ' +
      'no results or frames rejected, 0 worker\\(s\\) quarantined; adapter written to (.+)$',
  );
  assert.match(lastLine(run.stdout), done, run.stdout.slice(-600));
  assert.equal(done.exec(lastLine(run.stdout))![1], complete);
  assert.ok(!existsSync(join(complete, LOCK_FILE)));

  const metricsBefore = readFileSync(join(complete, 'metrics.jsonl'), 'utf8');
  const again = await runCli(['--resume', complete, '--local-workers', '0']);
  assert.equal(again.code, 0, again.stderr);
  assert.match(
    again.stdout,
    /^run complete already finished: step 6 of 6; nothing to do \(raise --steps to train further\)$/m,
  );
  assert.doesNotMatch(again.stdout, /^done:/m);
  assert.equal(readFileSync(join(complete, 'metrics.jsonl'), 'utf8'), metricsBefore);
  assert.deepEqual(readdirSync(join(complete, 'checkpoints')).sort(), [checkpointName(4), checkpointName(6)]);
});

test('--resume refuses contradicting flags in one line (exit 2) and a lowered --steps', async () => {
  const contradicting = await runCli(['--resume', complete, '--rank', '8', '--lr', '0.5']);
  assert.equal(contradicting.code, 2);
  const lines = contradicting.stderr.trim().split('\n');
  assert.equal(lines.length, 1, contradicting.stderr);
  assert.match(lines[0], new RegExp(`^loramesh: LM_ERR_CONFIG: --resume ${complete}: `));
  assert.match(lines[0], /--rank 8 contradicts the run's 4/);
  assert.match(lines[0], /--lr 0\.5 contradicts the run's 0\.01/);

  const lowered = await runCli(['--resume', complete, '--steps', '3']);
  assert.equal(lowered.code, 2);
  assert.match(
    lowered.stderr.trim(),
    /^loramesh: LM_ERR_CONFIG: .*--steps 3 is below the run's 6 \(steps may only be raised\)[^\n]*$/,
  );

  // Repeating the run's own values (all but --out), and changing deployment flags, is fine.
  const repeated = await runCli([
    '--resume',
    complete,
    ...runFlags(6).slice(0, -2),
    '--checkpoint-every',
    '4',
    '--local-workers',
    '3',
    '--heartbeat-ms',
    '1000',
  ]);
  assert.equal(repeated.code, 0, repeated.stderr);
  assert.match(repeated.stdout, /already finished: step 6 of 6/);
});

let evalStepsAfterExtension: number[] = [];

test('--resume with a raised --steps extends the finished run: every step once, the new total recorded', async () => {
  const metricsBefore = lossLines(complete);
  const extended = await runCli(['--resume', complete, '--steps', '9', '--local-workers', '2']);
  assert.equal(extended.code, 0, extended.stderr);
  assert.match(lastLine(extended.stdout), /^done: 9 steps, final loss /, extended.stdout.slice(-600));
  assert.deepEqual(lossSteps(complete), oneTo(9));
  assert.deepEqual(ledgerSteps(complete), oneTo(9));
  // The first six steps are the original run's lines, untouched.
  assert.deepEqual(lossLines(complete).slice(0, 6), metricsBefore);
  assert.equal(JSON.parse(readFileSync(join(complete, 'run_config.json'), 'utf8')).train.steps, 9);
  assert.ok(readdirSync(join(complete, 'checkpoints')).includes(checkpointName(9)));
  const metrics = jsonLines(join(complete, 'metrics.jsonl'));
  evalStepsAfterExtension = metrics.filter((l) => l.eval_loss !== undefined).map((l) => l.step);
});

// A resume evaluates the checkpoint's step again before it trains; the old eval line of that step
// is dropped with the truncation, so each evaluated step has one line.
test('the extended run has one eval-loss line per evaluated step', () => {
  assert.deepEqual(evalStepsAfterExtension, [0, 6, 9]);
});

test('one SIGINT while waiting for workers exits 130 at once with nothing to save', async (t) => {
  const dir = join(runs, 'waiting');
  const run = start([...runFlags(6), '--local-workers', '0', '--min-workers', '1', '--run-id', 'waiting']);
  await when(run.child, () => run.out.stdout.includes('waiting for 1 worker'), 'it waited for workers');
  const t0 = Date.now();
  run.child.kill('SIGINT');
  const done = await run.finished;
  const stopMs = Date.now() - t0;
  assert.equal(done.code, 130, done.stderr);
  t.diagnostic(`exited ${stopMs} ms after SIGINT`);
  assert.ok(stopMs < 5000, `exited ${stopMs} ms after SIGINT`);
  assert.match(done.stdout, /SIGINT: stopping/);
  assert.match(done.stdout, /interrupted at step 0 of 6; nothing to save yet/);
  assert.ok(!existsSync(join(dir, LOCK_FILE)), 'run.lock released');
  const checkpoints = existsSync(join(dir, 'checkpoints')) ? readdirSync(join(dir, 'checkpoints')) : [];
  assert.deepEqual(checkpoints, [], 'no checkpoint at step 0');
});

test('SIGTERM mid-training checkpoints the last whole step (exit 143); --resume ends bit-identical', async (t) => {
  const steps = 30;
  const model = await openModelDir(modelDir);
  const reference = await runTraining({
    model,
    examples: demoExamples(model.tokenizer, demoTaskData(64, 200, 5)),
    config: {
      run: {
        lora: checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] }),
        train: checkTrainConfig({ steps, globalBatch: 8, microBatch: 2, lr: 0.01, warmupSteps: 3, seed: 5 }),
      },
      deployment: { outDir: join(root, 'reference'), runId: 'reference', inProcess: true, localWorkers: 0 },
    },
    progress: false,
    log: () => {},
  });

  const dir = join(runs, 'stopped');
  // Local workers inherit the coordinator's environment: each result is held back 100 ms.
  const slowWorkers = cliEnv({ LORAMESH_FAULT: 'delay:100' });
  const run = start(
    [...runFlags(steps), '--local-workers', '3', '--checkpoint-every', '100', '--run-id', 'stopped'],
    slowWorkers,
  );
  await when(run.child, () => lossSteps(dir).length >= 5, '5 steps were done');
  run.child.kill('SIGTERM');
  const stopped = await run.finished;
  assert.equal(stopped.code, 143, stopped.stderr);
  const stoppedAt = Number(/^stopped at step (\d+) of 30; /m.exec(stopped.stdout)?.[1]);
  assert.ok(stoppedAt >= 5 && stoppedAt < steps, `stopped at step ${stoppedAt}`);
  t.diagnostic(`SIGTERM after ≥ 5 steps: stopped at step ${stoppedAt}`);
  assert.deepEqual(readdirSync(join(dir, 'checkpoints')), [checkpointName(stoppedAt)], 'only the one written on stop');
  assert.deepEqual(lossSteps(dir), oneTo(stoppedAt), 'the step in flight is not recorded');
  assert.ok(!existsSync(join(dir, LOCK_FILE)));

  const resumed = await runCli(['--resume', dir, '--local-workers', '2']);
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(resumed.stdout, new RegExp(`resuming stopped at step ${stoppedAt} of 30`));
  assert.match(lastLine(resumed.stdout), /^done: 30 steps, final loss /, resumed.stdout.slice(-600));
  assert.equal(maxAbsDiff(dir, reference), 0, `stopped at step ${stoppedAt}, resumed: max abs diff to the reference`);
  assert.deepEqual(lossSteps(dir), oneTo(steps));
  const ledger = jsonLines(join(dir, 'ledger.jsonl'));
  assert.deepEqual(
    ledger.map((l) => l.step),
    oneTo(steps),
  );
  for (const l of ledger) {
    assert.equal(l.microBatches.length, 4, `step ${l.step}: micro-batches`);
    for (const mb of l.microBatches) {
      const used = mb.attempts.filter((a: { outcome: string }) => a.outcome === 'used');
      assert.equal(used.length, 1, `step ${l.step}: one used result per micro-batch`);
    }
  }
});
