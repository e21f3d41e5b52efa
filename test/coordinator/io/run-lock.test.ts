// run.lock: a second holder gets LM_ERR_LOCKED naming the first; locks of dead or recycled PIDs
// on this host are taken over; a lock from another host never is; release removes only our own
// lock; an unreadable lock is held while young and stale when old; the exit fallback releases.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { acquireRunLock, LOCK_FILE, processStartTime, type LockHolder } from '../../../coordinator/io/run-lock.ts';
import { ErrorCodes } from '../../../shared/errors.ts';
import { throwsCode } from '../../helpers/assert.ts';

const root = mkdtempSync(join(tmpdir(), 'loramesh-run-lock-'));
test.after(() => rmSync(root, { recursive: true, force: true }));
let dirCount = 0;
const freshDir = () => {
  const dir = join(root, `run-${dirCount++}`);
  mkdirSync(dir);
  return dir;
};
const readLock = (dir: string): LockHolder => JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8'));
const writeLock = (dir: string, holder: LockHolder) => writeFileSync(join(dir, LOCK_FILE), JSON.stringify(holder));
const holder = (over: Partial<LockHolder>): LockHolder => ({
  pid: process.pid,
  host: hostname(),
  startedAt: '2024-01-02T03:04:05.000Z',
  processStart: processStartTime('self'),
  ...over,
});

/** The PID of a process that has exited (and been reaped). */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' });
  return Number(child.stdout.trim());
}

test('a second acquire gets LM_ERR_LOCKED naming pid, host and start; after release the folder is free again', () => {
  const dir = freshDir();
  const lock = acquireRunLock(dir);
  const onDisk = readLock(dir);
  assert.equal(onDisk.pid, process.pid);
  assert.equal(onDisk.host, hostname());
  assert.equal(onDisk.startedAt, lock.holder.startedAt);
  if (process.platform === 'linux') assert.equal(typeof onDisk.processStart, 'number');
  throwsCode(
    () => acquireRunLock(dir),
    ErrorCodes.LOCKED,
    new RegExp(`in use by pid ${process.pid} on host ${hostname()} since ${lock.holder.startedAt}; stop that process`),
  );
  lock.release();
  assert.ok(!existsSync(join(dir, LOCK_FILE)));
  acquireRunLock(dir).release();
});

test('a lock of a dead PID on this host is taken over, with one log line naming the old holder', () => {
  const dir = freshDir();
  const pid = deadPid();
  writeLock(dir, holder({ pid, processStart: 12345 }));
  const lines: string[] = [];
  const lock = acquireRunLock(dir, (line) => lines.push(line));
  assert.equal(readLock(dir).pid, process.pid);
  assert.equal(lines.length, 1);
  assert.match(lines[0], new RegExp(`took over run.lock of pid ${pid} on host .* \\(pid ${pid} is not running\\)`));
  lock.release();
  assert.ok(!existsSync(join(dir, LOCK_FILE)));
});

test('a lock of a live process on this host is refused', async () => {
  const dir = freshDir();
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)'], { stdio: 'ignore' });
  try {
    await new Promise((r) => child.once('spawn', r));
    writeLock(dir, holder({ pid: child.pid!, processStart: processStartTime(child.pid!) }));
    throwsCode(() => acquireRunLock(dir), ErrorCodes.LOCKED, new RegExp(`in use by pid ${child.pid} on host`));
    assert.equal(readLock(dir).pid, child.pid);
  } finally {
    child.kill('SIGKILL');
  }
});

test('a lock from another host is refused and left alone, even when its PID is dead here', () => {
  const dir = freshDir();
  const theirs = holder({ pid: deadPid(), host: `not-${hostname()}` });
  writeLock(dir, theirs);
  throwsCode(
    () => acquireRunLock(dir),
    ErrorCodes.LOCKED,
    /on host not-.* another host is never taken over: if that host is gone, remove .*run\.lock by hand/,
  );
  assert.deepEqual(readLock(dir), theirs);
});

test('a lock with our live PID but another process start time (a recycled PID) is taken over', (t) => {
  const ours = processStartTime('self');
  if (ours === null) return t.skip('no /proc/self/stat on this platform');
  const dir = freshDir();
  writeLock(dir, holder({ processStart: ours + 1 }));
  const lines: string[] = [];
  const lock = acquireRunLock(dir, (line) => lines.push(line));
  assert.equal(readLock(dir).processStart, ours);
  assert.match(lines[0], new RegExp(`pid ${process.pid} now belongs to another process`));
  lock.release();
});

test('release removes only a lock that still names this holder, and only once', () => {
  const dir = freshDir();
  const lock = acquireRunLock(dir);
  const successor = holder({ pid: process.pid, startedAt: '2030-01-01T00:00:00.000Z' });
  writeLock(dir, successor); // e.g. taken over meanwhile
  lock.release();
  assert.deepEqual(readLock(dir), successor);
  const other = holder({ pid: deadPid() });
  writeLock(dir, other);
  lock.release();
  assert.deepEqual(readLock(dir), other);
});

test('an unreadable lock file is held while young (a writer may be mid-write) and taken over once old', () => {
  const dir = freshDir();
  const path = join(dir, LOCK_FILE);
  for (const content of ['', '{"pid": 12', '{"pid": "x", "host": 1}']) {
    writeFileSync(path, content);
    throwsCode(
      () => acquireRunLock(dir),
      ErrorCodes.LOCKED,
      /run\.lock is being written or unreadable; if no process uses the folder, remove .*run\.lock by hand/,
    );
    assert.equal(readFileSync(path, 'utf8'), content);
    const old = new Date(Date.now() - 60_000);
    utimesSync(path, old, old);
    const lines: string[] = [];
    const lock = acquireRunLock(dir, (line) => lines.push(line));
    assert.equal(readLock(dir).pid, process.pid);
    assert.match(lines[0], /took over run\.lock of an unknown process \(the lock file was unreadable and \d+ s old\)/);
    lock.release();
  }
});

test('a process that exits without release() leaves no lock behind (exit fallback)', () => {
  const dir = freshDir();
  const lockModule = fileURLToPath(new URL('../../../coordinator/io/run-lock.ts', import.meta.url));
  const script =
    `import { acquireRunLock } from ${JSON.stringify(lockModule)}; ` +
    `acquireRunLock(${JSON.stringify(dir)}); process.exit(0);`;
  const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8',
  });
  assert.equal(child.status, 0, child.stderr);
  assert.ok(!existsSync(join(dir, LOCK_FILE)));
});

test('processes racing to take over one stale lock: exactly one wins, the others get LM_ERR_LOCKED', async () => {
  const dir = freshDir();
  writeLock(dir, holder({ pid: deadPid() }));
  const go = join(dir, 'go');
  const lockModule = fileURLToPath(new URL('../../../coordinator/io/run-lock.ts', import.meta.url));
  // Each racer waits for the go file so that all of them try within a few ms of each other.
  const script =
    `import { existsSync } from 'node:fs'; import { acquireRunLock } from ${JSON.stringify(lockModule)};
    const nap = new Int32Array(new SharedArrayBuffer(4)); console.log('ready');
    while (!existsSync(${JSON.stringify(go)})) Atomics.wait(nap, 0, 0, 1);
    try { const lock = acquireRunLock(${JSON.stringify(dir)}, () => {}); console.log('won'); ` +
    `setTimeout(() => lock.release(), 1500); }
    catch (err) { console.log(err.code); }`;
  const racers = Array.from({ length: 4 }, () =>
    spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    }),
  );
  const outputs = racers.map((child) => {
    let out = '';
    child.stdout!.on('data', (chunk) => (out += chunk));
    return {
      ready: new Promise<void>((resolve) => child.stdout!.on('data', () => out.includes('ready') && resolve())),
      done: new Promise<string>((resolve) => child.once('exit', () => resolve(out.replace('ready', '').trim()))),
    };
  });
  await Promise.all(outputs.map((o) => o.ready));
  writeFileSync(go, '');
  const results = await Promise.all(outputs.map((o) => o.done));
  assert.deepEqual(results.sort(), ['LM_ERR_LOCKED', 'LM_ERR_LOCKED', 'LM_ERR_LOCKED', 'won']);
  assert.ok(!existsSync(join(dir, LOCK_FILE)), 'the winner released its lock');
});
