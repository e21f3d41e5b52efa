// Two processes on one run folder: while `loramesh train --run-id X` holds runs/X (waiting for a
// worker), a second `train --run-id X` is refused (the folder holds a run) and `train --resume`
// gets LM_ERR_LOCKED naming the holder's pid. After the holder is SIGKILLed its lock is stale: the
// next process takes it over and releases it even when it then fails (no checkpoint to resume).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LOCK_FILE } from '../../coordinator/io/run-lock.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

const root = mkdtempSync(join(tmpdir(), 'loramesh-run-lock-cli-'));
test.after(() => rmSync(root, { recursive: true, force: true }));
const cli = fileURLToPath(new URL('../../coordinator/cli.ts', import.meta.url));
const env = { ...process.env, LORAMESH_CACHE: join(root, 'cache') };
const train = [
  '--import',
  'tsx',
  cli,
  'train',
  '--backend',
  'wasm',
  '--local-workers',
  '0',
  '--min-workers',
  '1',
  '--steps',
  '5',
  '--global-batch',
  '4',
  '--micro-batch',
  '2',
  '--train-size',
  '16',
  '--rank',
  '2',
  '--targets',
  'q_proj',
];

/** Runs the CLI to completion: exit code and stderr lines. */
function cliRun(args: string[]): { status: number | null; errors: string[]; stdout: string } {
  const r = spawnSync(process.execPath, [...train, ...args], { encoding: 'utf8', env, timeout: 30_000 });
  return { status: r.status, errors: r.stderr.split('\n').filter((l) => l.trim() !== ''), stdout: r.stdout };
}

test(
  'a run folder in use refuses a second train, ' +
    "--resume names the holder, and a SIGKILLed holder's lock is taken over",
  async () => {
    writeTinyModelDir(join(root, 'model'), 3);
    const runDir = join(root, 'runs', 'X');
    const owned = ['--model', join(root, 'model'), '--out', join(root, 'runs'), '--run-id', 'X'];
    const holder = spawn(process.execPath, [...train, ...owned], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let output = '';
    holder.stdout!.on('data', (chunk) => (output += chunk));
    holder.stderr!.on('data', (chunk) => (output += chunk));
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout!.on('data', () => output.includes('waiting for 1 worker') && resolve());
        holder.once('exit', (code) =>
          reject(new Error(`the first run exited (${code}) before waiting for workers:\n${output}`)),
        );
      });
      const lock = JSON.parse(readFileSync(join(runDir, LOCK_FILE), 'utf8'));
      assert.equal(lock.pid, holder.pid);
      assert.equal(lock.host, hostname());

      const again = cliRun(owned);
      assert.equal(again.status, 2, again.errors.join('\n'));
      assert.deepEqual(again.errors, [
        `loramesh: LM_ERR_CONFIG: run folder ${runDir} already exists (it has run_config.json); ` +
          `pick another --run-id or continue it with --resume ${runDir}`,
      ]);

      const resumed = cliRun(['--resume', runDir]);
      assert.equal(resumed.status, 2, resumed.errors.join('\n'));
      assert.equal(resumed.errors.length, 1, resumed.errors.join('\n'));
      assert.match(
        resumed.errors[0],
        new RegExp(
          `^loramesh: LM_ERR_LOCKED: ${runDir} is in use by pid ${holder.pid} on host ${hostname()} ` +
            `since ${lock.startedAt}; stop that process or wait for it$`,
        ),
      );
      assert.equal(
        JSON.parse(readFileSync(join(runDir, LOCK_FILE), 'utf8')).pid,
        holder.pid,
        'the refused processes left the lock alone',
      );
    } finally {
      holder.kill('SIGKILL');
    }
    await new Promise((r) => holder.once('exit', r));
    assert.ok(existsSync(join(runDir, LOCK_FILE)), 'SIGKILL leaves the lock file behind');

    // No checkpoint was written, so the resume fails, but only after taking the stale lock over,
    // and it releases the lock on the way out.
    const afterKill = cliRun(['--resume', runDir]);
    assert.equal(afterKill.status, 2, afterKill.errors.join('\n'));
    assert.match(
      afterKill.stdout + afterKill.errors.join('\n'),
      new RegExp(`took over run\\.lock of pid ${holder.pid} on host .*\\(pid ${holder.pid} is not running\\)`),
    );
    assert.match(afterKill.errors.join('\n'), /LM_ERR_STATE: --resume .*: no valid checkpoint to resume from/);
    assert.ok(!existsSync(join(runDir, LOCK_FILE)), 'a run that fails before its first step releases the lock');
  },
);
