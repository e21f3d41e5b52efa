// Checkpoints: a bit-exact round trip, keep-K pruning, damaged files skipped with a message that
// names them, single-bit flips all over a checkpoint caught, stale temp files cleaned up, and the
// kill test: a writer process SIGKILLed at random moments ≥ 100 times never leaves a checkpoint
// that loads wrong.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  checkpointName,
  checkpointsDir,
  loadLatestCheckpoint,
  saveCheckpoint,
  type LoadedCheckpoint,
} from '../../../coordinator/io/checkpoint.ts';
import type { TrainerState } from '../../../coordinator/engine/trainer.ts';
import { ErrorCodes } from '../../../shared/errors.ts';
import { Rng } from '../../../shared/rng.ts';
import { throwsCode } from '../../helpers/assert.ts';
import { WRITER_CONFIG, WRITER_KEEP, writerLedger, writerState } from '../../helpers/checkpoint-writer.ts';

const WRITER = fileURLToPath(new URL('../../helpers/checkpoint-writer.ts', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'loramesh-checkpoint-'));
test.after(() => rmSync(root, { recursive: true, force: true }));
let dirCount = 0;
const freshDir = () => join(root, `run-${dirCount++}`);

const bytesOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** Bit-exact equality of two states (NaN payloads and -0 included). */
function assertSameState(actual: TrainerState, expected: TrainerState, where: string): void {
  assert.deepEqual(
    { step: actual.step, paramVersion: actual.paramVersion, cursor: actual.cursor, adamStep: actual.adam.step },
    { step: expected.step, paramVersion: expected.paramVersion, cursor: expected.cursor, adamStep: expected.adam.step },
    where,
  );
  for (const [what, a, e] of [
    ['adapter', actual.adapter, expected.adapter],
    ['adam.m', actual.adam.m, expected.adam.m],
    ['adam.v', actual.adam.v, expected.adam.v],
  ] as const) {
    assert.deepEqual([...a.keys()].sort(), [...e.keys()].sort(), `${where}: ${what} tensor names`);
    for (const [name, data] of e)
      assert.ok(bytesOf(a.get(name)!).equals(bytesOf(data)), `${where}: ${what}/${name} differs`);
  }
}

/** A small state with the awkward float values spelled out. */
function smallState(step: number): TrainerState {
  const special = new Float32Array([0, -0, 1.5, -3.25e-38, 1e-45, 3.4e38, Infinity, -Infinity, NaN]);
  new Uint32Array(special.buffer)[8] = 0x7fc0_1234; // a NaN with a payload
  const tensor = (k: number) =>
    Float32Array.from({ length: 24 }, (_, i) => Math.fround(Math.sin(step * 31 + k * 7 + i)));
  const group = (k: number) =>
    new Map([
      ['q.lora_A', tensor(k)],
      ['q.lora_B', special.slice()],
      ['v.lora_A', tensor(k + 1)],
    ]);
  return {
    step,
    paramVersion: step + 1,
    cursor: { epoch: 2, position: step },
    adapter: group(0),
    adam: { step: step * 3, m: group(10), v: group(20) },
  };
}

const ckptFiles = (dir: string) =>
  readdirSync(checkpointsDir(dir))
    .filter((f) => f.endsWith('.ckpt'))
    .sort();

test('a checkpoint round-trips bit for bit, with its config and ledger', () => {
  const dir = freshDir();
  const state = smallState(123);
  const config = { model: 'tiny', lora: { r: 4, alpha: 8 }, train: { steps: 500, lr: 1e-3 } };
  const ledger = [{ step: 122, microBatches: [{ index: 0, usedWorker: 'w1', attempts: 2 }] }];
  const path = saveCheckpoint(dir, state, { config, ledger }, 3);
  assert.equal(path, join(dir, 'checkpoints', 'step-000123.ckpt'));
  const logs: string[] = [];
  const loaded = loadLatestCheckpoint(dir, (l) => logs.push(l))!;
  assert.equal(loaded.path, path);
  assertSameState(loaded.state, state, 'round trip');
  assert.deepEqual(loaded.config, config);
  assert.deepEqual(loaded.ledger, ledger);
  assert.deepEqual(logs, []);

  saveCheckpoint(dir, smallState(124), { config }, 3);
  assert.equal(loadLatestCheckpoint(dir, () => {})!.ledger, null); // saved without one
  // the writer's big state too (3.8 MB, every bit pattern)
  saveCheckpoint(dir, writerState(125), { config: WRITER_CONFIG, ledger: writerLedger(125) }, 3);
  const big = loadLatestCheckpoint(dir, () => {})!;
  assertSameState(big.state, writerState(125), 'writer state');
  assert.deepEqual(big.ledger, writerLedger(125));
});

test('only the newest `keep` checkpoints are kept; keep must be a positive integer', () => {
  const dir = freshDir();
  for (let step = 1; step <= 7; step++) saveCheckpoint(dir, smallState(step * 10), { config: {} }, 3);
  assert.deepEqual(ckptFiles(dir), ['step-000050.ckpt', 'step-000060.ckpt', 'step-000070.ckpt']);
  saveCheckpoint(dir, smallState(80), { config: {} }, 1);
  assert.deepEqual(ckptFiles(dir), ['step-000080.ckpt']);
  // order is by step, not by name: a step past 999999 sorts after 999999
  saveCheckpoint(dir, smallState(999_999), { config: {} }, 2);
  saveCheckpoint(dir, smallState(1_000_000), { config: {} }, 2);
  assert.deepEqual(ckptFiles(dir), ['step-1000000.ckpt', 'step-999999.ckpt']);
  assert.equal(loadLatestCheckpoint(dir, () => {})!.state.step, 1_000_000);
  for (const keep of [0, -1, 1.5, NaN])
    throwsCode(
      () => saveCheckpoint(dir, smallState(1), { config: {} }, keep),
      ErrorCodes.CONFIG,
      /keep should be a positive integer/,
    );
});

test('a save prunes before it writes: checkpoints a crash left over `keep` never pile up', () => {
  // A process killed between a write and its pruning leaves keep + 1; the next save must not add one more before it
  // prunes. Here the write itself fails (a directory is in its temp file's place): the leftover is already gone.
  const dir = freshDir();
  for (let step = 1; step <= 4; step++) saveCheckpoint(dir, smallState(step), { config: {} }, 4);
  assert.equal(ckptFiles(dir).length, 4, 'as a crash before pruning at keep 3 would leave them');
  mkdirSync(join(checkpointsDir(dir), `step-000005.ckpt.tmp-${process.pid}`));
  assert.throws(() => saveCheckpoint(dir, smallState(5), { config: {} }, 3));
  const files = readdirSync(checkpointsDir(dir), { withFileTypes: true }).filter((e) => e.isFile());
  assert.deepEqual(files.map((e) => e.name).sort(), ['step-000002.ckpt', 'step-000003.ckpt', 'step-000004.ckpt']);
});

test(
  'a truncated newest checkpoint and a bit-flipped one are skipped, ' +
    'named in the log, and the older valid one loads',
  () => {
    const dir = freshDir();
    for (const step of [1, 2, 3]) saveCheckpoint(dir, smallState(step), { config: { step } }, 5);
    const folder = checkpointsDir(dir);
    const third = join(folder, checkpointName(3));
    truncateSync(third, statSync(third).size - 100);
    const second = join(folder, checkpointName(2));
    const bytes = readFileSync(second);
    bytes[bytes.length - 40] ^= 0x08; // one bit in the data section
    writeFileSync(second, bytes);

    const logs: string[] = [];
    const loaded = loadLatestCheckpoint(dir, (l) => logs.push(l))!;
    assert.equal(loaded.path, join(folder, checkpointName(1)));
    assertSameState(loaded.state, smallState(1), 'fallback');
    assert.deepEqual(loaded.config, { step: 1 });
    assert.equal(logs.length, 2, logs.join('\n'));
    assert.match(logs[0], /step-000003\.ckpt: .*truncated: \d+ bytes, the header describes \d+/);
    assert.match(logs[1], /step-000002\.ckpt: .*checksum mismatch/);

    // a file cut inside its header, an empty file and one that is not a checkpoint at all
    truncateSync(join(folder, checkpointName(1)), 20);
    writeFileSync(join(folder, checkpointName(4)), '');
    writeFileSync(
      join(folder, checkpointName(5)),
      Buffer.concat([Buffer.from([2, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{]')]),
    );
    logs.length = 0;
    assert.equal(
      loadLatestCheckpoint(dir, (l) => logs.push(l)),
      null,
    );
    assert.equal(logs.length, 5, logs.join('\n'));
    assert.match(logs[0], /step-000005\.ckpt: .*bad header: .*not UTF-8 JSON/);
    assert.match(logs[1], /step-000004\.ckpt: .*truncated: 0 bytes/);
    assert.match(logs[4], /step-000001\.ckpt: .*truncated \(or bad header length\)/);
  },
);

test('after resuming past a damaged checkpoint, saving sets the later one aside instead of pruning the new one', () => {
  const dir = freshDir();
  for (const step of [10, 20]) saveCheckpoint(dir, smallState(step), { config: {} }, 2);
  const folder = checkpointsDir(dir);
  truncateSync(join(folder, checkpointName(20)), 100);
  assert.equal(loadLatestCheckpoint(dir, () => {})!.state.step, 10);
  saveCheckpoint(dir, smallState(11), { config: {} }, 1);
  assert.deepEqual(readdirSync(folder).sort(), ['step-000011.ckpt', 'step-000020.ckpt.superseded']);
  const logs: string[] = [];
  assertSameState(loadLatestCheckpoint(dir, (l) => logs.push(l))!.state, smallState(11), 'after resume');
  assert.deepEqual(logs, []);
});

test('a single-bit flip anywhere in the header (one per byte) and 300 in the data are all caught', () => {
  const dir = freshDir();
  const path = saveCheckpoint(dir, smallState(2), { config: { lr: 0.001 }, ledger: [{ step: 1 }] }, 5);
  const original = readFileSync(path);
  const dataStart = 8 + Number(original.readBigUInt64LE(0));
  const rng = new Rng(7);
  const bits = [
    ...Array.from({ length: dataStart }, (_, byte) => byte * 8 + Math.floor(rng.next() * 8)),
    ...Array.from({ length: 300 }, () => dataStart * 8 + Math.floor(rng.next() * (original.length - dataStart) * 8)),
  ];
  let caught = 0;
  const fd = openSync(path, 'r+'); // flipped in place: rewriting the whole file costs ext4 a flush each time
  try {
    for (const bit of bits) {
      const at = bit >> 3;
      writeSync(fd, Uint8Array.of(original[at] ^ (1 << (bit & 7))), 0, 1, at);
      const logs: string[] = [];
      const loaded = loadLatestCheckpoint(dir, (l) => logs.push(l));
      // caught: refused and named in the log; a flip that still loads fails loudly if it changed what loads
      if (loaded === null && logs.length === 1 && logs[0].includes('step-000002.ckpt')) caught++;
      else if (loaded) assertSameState(loaded.state, smallState(2), `bit ${bit} flipped`);
      writeSync(fd, original, at, 1, at);
    }
  } finally {
    closeSync(fd);
  }
  assert.equal(caught, bits.length, `${bits.length - caught} of ${bits.length} flips were not caught`);
});

test('temp files of interrupted writes are ignored; those of dead writers are removed', () => {
  const dir = freshDir();
  saveCheckpoint(dir, smallState(1), { config: {} }, 2);
  const dead = spawnSync(process.execPath, ['-e', '']).pid!; // exited: its pid is (almost surely) free
  const folder = checkpointsDir(dir);
  const deadTemp = join(folder, `${checkpointName(2)}.tmp-${dead}`);
  const liveTemp = join(folder, `${checkpointName(3)}.tmp-${process.pid}`);
  writeFileSync(deadTemp, 'half a checkpoint');
  writeFileSync(liveTemp, 'a checkpoint being written');
  const logs: string[] = [];
  assert.equal(loadLatestCheckpoint(dir, (l) => logs.push(l))!.state.step, 1);
  assert.equal(existsSync(deadTemp), false);
  assert.equal(existsSync(liveTemp), true);
  assert.deepEqual(logs, [`checkpoint: removed ${deadTemp}, a temp file left by an interrupted write`]);
  assert.equal(
    loadLatestCheckpoint(freshDir(), () => {}),
    null,
  ); // no checkpoints folder at all
  mkdirSync(checkpointsDir(join(root, 'empty')), { recursive: true });
  assert.equal(
    loadLatestCheckpoint(join(root, 'empty'), () => {}),
    null,
  );
});

interface KillOutcome {
  /** the step the writer resumed at (absent when killed before `ready`) */
  firstStep?: number;
  lastBegun?: number;
  lastDone?: number;
  /** its temp file was on disk after the kill: killed between open and rename */
  tempLeft: boolean;
  readyMs?: number;
}

/** Spawns the writer on dir and SIGKILLs it delayMs after spawning it or after it prints `ready`. */
function killWriter(dir: string, delayMs: number, afterReady: boolean): Promise<KillOutcome> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, ['--import', 'tsx', WRITER, dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let readyMs: number | undefined;
    const kill = () => setTimeout(() => child.kill('SIGKILL'), delayMs);
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk;
      if (afterReady && readyMs === undefined && stdout.includes('\n')) {
        readyMs = performance.now() - started;
        kill();
      }
    });
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk));
    if (!afterReady) kill();
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (signal !== 'SIGKILL')
        return reject(new Error(`writer exited with ${code ?? signal} before the kill:\n${stderr}`));
      const last = (what: string) => {
        const steps = [...stdout.matchAll(new RegExp(`^${what} (\\d+)$`, 'gm'))].map((m) => Number(m[1]));
        return steps.length ? steps[steps.length - 1] : undefined;
      };
      const tempLeft = readdirSync(checkpointsDir(dir), { withFileTypes: true }).some((e) =>
        e.name.endsWith(`.tmp-${child.pid}`),
      );
      resolve({ firstStep: last('ready'), lastBegun: last('begin'), lastDone: last('done'), tempLeft, readyMs });
    });
  });
}

test('SIGKILL at random moments while writing never leaves a checkpoint that loads wrong', {
  timeout: 180_000,
}, async (t) => {
  const lanes = 2; // writers running at once
  // every 11th killed 0–1000 ms after spawn (startup, resume, first saves), the rest 0–150 ms after `ready`
  const trialsPerLane = 55;
  const trialsPerDir = 11; // then a fresh run folder, so "nothing saved yet" comes up too
  const seed = Number(process.env.CHECKPOINT_KILL_SEED ?? Date.now() % 1_000_000);
  const rng = new Rng(seed);
  const counts = {
    kills: 0,
    afterReady: 0,
    inSave: 0,
    tempLeft: 0,
    renamedNotDone: 0,
    nullLoads: 0,
    readyMs: [] as number[],
  };
  const started = performance.now();

  async function lane(laneIndex: number): Promise<void> {
    let dir = '';
    let committed: number | null = null; // newest step known to be on disk
    for (let trial = 0; trial < trialsPerLane; trial++) {
      if (trial % trialsPerDir === 0) {
        dir = freshDir();
        mkdirSync(checkpointsDir(dir), { recursive: true });
        committed = null;
      }
      const afterReady = trial % 11 !== 10;
      const delayMs = afterReady ? rng.next() * 150 : rng.next() * 1000;
      const where =
        `seed ${seed}, lane ${laneIndex}, trial ${trial} ` +
        `(${afterReady ? `${delayMs.toFixed(0)} ms after ready` : `${delayMs.toFixed(0)} ms after spawn`})`;
      const outcome = await killWriter(dir, delayMs, afterReady);
      const logs: string[] = [];
      const loaded: LoadedCheckpoint | null = loadLatestCheckpoint(dir, (l) => logs.push(l));

      // A checkpoint file is either whole or absent: nothing is ever skipped as damaged.
      assert.deepEqual(
        logs.filter((l) => l.includes('skipped')),
        [],
        where,
      );
      const interrupted = outcome.lastBegun !== undefined && outcome.lastBegun !== outcome.lastDone;
      const done = outcome.lastDone ?? committed;
      // The newest file is the last completed save, or the interrupted one if its rename landed.
      const allowed = interrupted ? [done, outcome.lastBegun!] : [done];
      assert.ok(
        allowed.includes(loaded?.state.step ?? null),
        `${where}: loaded step ${loaded?.state.step ?? null}, expected one of ${allowed}`,
      );
      if (loaded) {
        assertSameState(loaded.state, writerState(loaded.state.step), where);
        assert.deepEqual(loaded.config, WRITER_CONFIG, where);
        assert.deepEqual(loaded.ledger, writerLedger(loaded.state.step), where);
      }
      // + 1 if killed before pruning
      assert.ok(ckptFiles(dir).length <= WRITER_KEEP + 1, `${where}: ${ckptFiles(dir).length} checkpoints left`);
      assert.ok(
        !readdirSync(checkpointsDir(dir)).some((f) => f.includes('.tmp-')),
        `${where}: a temp file survived loading`,
      );

      committed = loaded?.state.step ?? null;
      counts.kills++;
      if (afterReady) counts.afterReady++;
      if (interrupted) counts.inSave++;
      if (outcome.tempLeft) counts.tempLeft++;
      if (interrupted && loaded?.state.step === outcome.lastBegun) counts.renamedNotDone++;
      if (!loaded) counts.nullLoads++;
      if (outcome.readyMs !== undefined) counts.readyMs.push(outcome.readyMs);
    }
  }
  await Promise.all(Array.from({ length: lanes }, (_, i) => lane(i)));

  const seconds = (performance.now() - started) / 1000;
  const meanReady = counts.readyMs.reduce((a, b) => a + b, 0) / counts.readyMs.length;
  t.diagnostic(
    `seed ${seed}: ${counts.kills} kills (${counts.afterReady} after ready) in ${seconds.toFixed(1)} s; ` +
      `${counts.inSave} inside saveCheckpoint, ${counts.tempLeft} between the temp file's open and its rename, ` +
      `${counts.renamedNotDone} after the rename but before 'done'; ${counts.nullLoads} with no checkpoint yet; ` +
      `writer ready after ${meanReady.toFixed(0)} ms on average`,
  );
  assert.ok(counts.afterReady >= 100);
  assert.ok(counts.tempLeft > 0, 'no kill landed mid-write: the test does not exercise what it claims');
});
