/**
 * Resumable checkpoints: runs/<run-id>/checkpoints/step-<000123>.ckpt, one safetensors file per
 * saved step holding everything Trainer.importState needs plus the run config and the ledger.
 *
 *   tensors   adapter/<name>, adam.m/<name>, adam.v/<name>, outer.m/<name> (local-steps mode)   F32, shape [length]
 *   metadata  format, step, paramVersion, cursor (JSON), adamStep, config (JSON), ledger (JSON),
 *             sha256 (hex, over everything else: see checkpointDigest)
 *
 * A file is written with writeAtomic (temp name, fsync, rename, fsync dir), so a crash leaves the
 * old checkpoints and at most a stray temp file; the checksum catches what the rename cannot
 * (disk corruption, a copy cut short). Loading walks the checkpoints newest first and takes the
 * first one that is whole.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import {
  decodeTensorData,
  encodeSafetensors,
  readSafetensorsHeader,
  type SafetensorsHeader,
  type TensorInput,
} from '../../shared/formats/safetensors.ts';
import type { AdapterState } from '../../shared/lora/adapter.ts';
import { writeAtomic } from './run-dir.ts';
import type { TrainerState } from '../engine/trainer.ts';

const FORMAT = 'loramesh-checkpoint/1';
const CHECKPOINT_NAME = /^step-(\d+)\.ckpt$/;
/** writeAtomic's temp name: `<final>.tmp-<pid>` */
const TEMP_NAME = /^step-\d+\.ckpt\.tmp-(\d+)$/;
const GROUPS = ['adapter', 'adam.m', 'adam.v', 'outer.m'] as const;

export interface LoadedCheckpoint {
  path: string;
  state: TrainerState;
  config: unknown;
  /** null when the checkpoint was saved without one */
  ledger: unknown;
}

export const checkpointsDir = (runDir: string) => join(runDir, 'checkpoints');
export const checkpointName = (step: number) => `step-${String(step).padStart(6, '0')}.ckpt`;

/**
 * sha256 (hex) over the metadata other than sha256 itself (sorted keys), the tensor index (names,
 * dtypes, shapes, offsets) and the data section. Header padding is the only part left out.
 */
function checkpointDigest(header: SafetensorsHeader, bytes: Uint8Array): string {
  const metadata = Object.keys(header.metadata)
    .filter((k) => k !== 'sha256')
    .sort()
    .map((k) => [k, header.metadata[k]]);
  const hash = createHash('sha256');
  hash.update(JSON.stringify({ metadata, tensors: [...header.entries] }));
  hash.update(bytes.subarray(header.dataStart));
  return hash.digest('hex');
}

/**
 * Writes <dir>/checkpoints/step-<step>.ckpt, then deletes all but the newest `keep` checkpoints.
 * Returns the new file's path. Checkpoints of a later step belong to a timeline the run left when
 * it resumed from an earlier one (so they did not load): they are renamed to `.superseded`, kept
 * for a person to look at, so a later resume cannot jump back to them and pruning cannot delete
 * the checkpoint just written. A checkpoint whose header would go over the safetensors header cap
 * (a huge ledger) fails here rather than becoming unloadable.
 */
export function saveCheckpoint(
  dir: string,
  state: TrainerState,
  extra: { config: unknown; ledger?: unknown },
  keep: number,
): string {
  if (!Number.isSafeInteger(keep) || keep < 1)
    fail(ErrorCodes.CONFIG, `checkpoint keep should be a positive integer, got ${keep}`);
  if (!Number.isSafeInteger(state.step) || state.step < 0)
    fail(ErrorCodes.STATE, `checkpoint step should be a non-negative integer, got ${state.step}`);
  const configJson = JSON.stringify(extra.config);
  if (configJson === undefined)
    fail(ErrorCodes.CONFIG, `checkpoint config should be JSON-serialisable, got ${typeof extra.config}`);

  const tensors: Record<string, TensorInput> = {};
  const add = (group: string, arrays: AdapterState) => {
    for (const [name, data] of arrays) tensors[`${group}/${name}`] = { data, shape: [data.length] };
  };
  add('adapter', state.adapter);
  add('adam.m', state.adam.m);
  add('adam.v', state.adam.v);
  if (state.outerMomentum) add('outer.m', state.outerMomentum);
  const metadata: Record<string, string> = {
    format: FORMAT,
    step: String(state.step),
    paramVersion: String(state.paramVersion),
    cursor: JSON.stringify(state.cursor),
    adamStep: String(state.adam.step),
    config: configJson,
  };
  if (extra.ledger !== undefined) metadata.ledger = JSON.stringify(extra.ledger);

  // Encode once to learn the header the digest covers, then again with the digest in it; the
  // data section and the tensor index are the same both times (offsets are relative to the data).
  const unsigned = encodeSafetensors(tensors, metadata);
  metadata.sha256 = checkpointDigest(readSafetensorsHeader(unsigned), unsigned);
  const bytes = encodeSafetensors(tensors, metadata);

  const folder = checkpointsDir(dir);
  mkdirSync(folder, { recursive: true });
  const path = join(folder, checkpointName(state.step));
  // Pruned before writing too: a process killed between a write and its pruning left one checkpoint over `keep`,
  // and without this each such crash in a row would leave one more. So there are never more than keep + 1.
  pruneCheckpoints(folder, state.step, keep);
  writeAtomic(path, bytes);
  for (const later of listCheckpoints(folder).filter((c) => c.step > state.step))
    renameSync(join(folder, later.file), join(folder, `${later.file}.superseded`));
  pruneCheckpoints(folder, state.step, keep);
  return path;
}

/** Deletes all but the newest `keep` checkpoints of steps up to `step`. */
function pruneCheckpoints(folder: string, step: number, keep: number): void {
  for (const old of listCheckpoints(folder)
    .filter((c) => c.step <= step)
    .slice(keep))
    rmSync(join(folder, old.file), { force: true });
}

/** Checkpoint files in folder, newest (highest step) first. */
function listCheckpoints(folder: string): { file: string; step: number }[] {
  let files: string[];
  try {
    files = readdirSync(folder);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return files
    .flatMap((file) => {
      const match = CHECKPOINT_NAME.exec(file);
      return match ? [{ file, step: Number(match[1]) }] : [];
    })
    .sort((a, b) => b.step - a.step);
}

const processAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // alive, owned by someone else
  }
};

/**
 * Removes temp files left by interrupted writes. One whose writer is still running is left alone
 * (a live run saving while someone inspects its folder).
 */
function removeStaleTemps(folder: string, log: (line: string) => void): void {
  let files: string[];
  try {
    files = readdirSync(folder);
  } catch {
    return;
  }
  for (const file of files) {
    const match = TEMP_NAME.exec(file);
    if (!match || Number(match[1]) === process.pid || processAlive(Number(match[1]))) continue;
    rmSync(join(folder, file), { force: true });
    log(`checkpoint: removed ${join(folder, file)}, a temp file left by an interrupted write`);
  }
}

const withoutCode = (err: unknown) => (err as Error).message.replace(/^LM_ERR_\w+: /, '');

/**
 * Decodes and checks one checkpoint; throws LM_ERR_SAFETENSORS (damaged file) or LM_ERR_STATE (wrong contents)
 * saying why it cannot be used.
 */
function decodeCheckpoint(
  bytes: Uint8Array,
  fileStep: number,
): { state: TrainerState; config: unknown; ledger: unknown } {
  if (bytes.length < 8)
    fail(ErrorCodes.SAFETENSORS, `truncated: ${bytes.length} bytes, less than the 8-byte header length`);
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (headerLength > BigInt(bytes.length - 8))
    fail(
      ErrorCodes.SAFETENSORS,
      `truncated (or bad header length): header length ${headerLength} but only ${bytes.length - 8} bytes follow`,
    );
  // Parse the header as if the file were long enough, then compare the length it describes.
  const dataStart = 8 + Number(headerLength);
  let header: SafetensorsHeader;
  try {
    header = readSafetensorsHeader(bytes.subarray(0, dataStart), Number.MAX_SAFE_INTEGER);
  } catch (err) {
    fail(ErrorCodes.SAFETENSORS, `bad header: ${withoutCode(err)}`);
  }
  const dataEnd = dataStart + Math.max(0, ...[...header.entries.values()].map((e) => e.data_offsets[1]));
  if (dataEnd > bytes.length)
    fail(ErrorCodes.SAFETENSORS, `truncated: ${bytes.length} bytes, the header describes ${dataEnd}`);
  if (dataEnd < bytes.length)
    fail(ErrorCodes.SAFETENSORS, `bad length: ${bytes.length} bytes, the header describes ${dataEnd}`);

  const meta = header.metadata;
  if (meta.format !== FORMAT)
    fail(
      ErrorCodes.SAFETENSORS,
      `bad header: format ${JSON.stringify(meta.format)}, expected ${JSON.stringify(FORMAT)}`,
    );
  if (typeof meta.sha256 !== 'string') fail(ErrorCodes.SAFETENSORS, 'bad header: no sha256 in the metadata');
  const digest = checkpointDigest(header, bytes);
  if (digest !== meta.sha256)
    fail(ErrorCodes.SAFETENSORS, `checksum mismatch: sha256 ${digest}, the metadata says ${meta.sha256}`);

  // The checksum matched, so what follows is what saveCheckpoint wrote; these guard against a
  // file from another writer that happens to carry a valid digest.
  const count = (key: string) => {
    const value = Number(meta[key]);
    if (meta[key] === undefined || !Number.isSafeInteger(value) || value < 0)
      fail(ErrorCodes.STATE, `metadata ${key} should be a non-negative integer, got ${JSON.stringify(meta[key])}`);
    return value;
  };
  const json = (key: string) => {
    try {
      return JSON.parse(meta[key]) as unknown;
    } catch {
      return fail(ErrorCodes.STATE, `metadata ${key} should be JSON, got ${JSON.stringify(meta[key]?.slice(0, 60))}`);
    }
  };
  const step = count('step');
  if (step !== fileStep)
    fail(ErrorCodes.STATE, `metadata step ${step} does not match the file name's step ${fileStep}`);
  const cursor = json('cursor') as { epoch?: unknown; position?: unknown };
  if (!Number.isSafeInteger(cursor?.epoch) || !Number.isSafeInteger(cursor?.position))
    fail(ErrorCodes.STATE, `metadata cursor should be {epoch, position} integers, got ${meta.cursor}`);

  const groups = new Map<string, AdapterState>(GROUPS.map((g) => [g, new Map()]));
  for (const [key, entry] of header.entries) {
    const slash = key.indexOf('/');
    const group = groups.get(key.slice(0, slash));
    if (slash < 0 || !group)
      fail(ErrorCodes.STATE, `tensor ${key}: expected a name starting with ${GROUPS.map((g) => `${g}/`).join(', ')}`);
    if (entry.dtype !== 'F32') fail(ErrorCodes.STATE, `tensor ${key}: dtype ${entry.dtype}, expected F32`);
    const [begin, end] = entry.data_offsets;
    group.set(
      key.slice(slash + 1),
      decodeTensorData(key, entry, bytes.subarray(dataStart + begin, dataStart + end)).data as Float32Array,
    );
  }
  const [adapter, m, v, outer] = GROUPS.map((g) => groups.get(g)!);
  for (const [what, arrays] of [
    ['adam.m', m],
    ['adam.v', v],
    ...(outer.size > 0 ? [['outer.m', outer] as const] : []),
  ] as const) {
    const names = [...adapter.keys()];
    if (arrays.size !== adapter.size || names.some((n) => arrays.get(n)?.length !== adapter.get(n)!.length)) {
      fail(
        ErrorCodes.STATE,
        `${what} tensors do not match the adapter tensors one for one (${arrays.size} vs ${adapter.size})`,
      );
    }
  }
  const state: TrainerState = {
    step,
    paramVersion: count('paramVersion'),
    cursor: { epoch: cursor.epoch as number, position: cursor.position as number },
    adapter,
    adam: { step: count('adamStep'), m, v },
    ...(outer.size > 0 ? { outerMomentum: outer } : {}),
  };
  return { state, config: json('config'), ledger: meta.ledger === undefined ? null : json('ledger') };
}

/**
 * The newest checkpoint under <dir>/checkpoints that is whole, or null when there is none. Every
 * file passed over is logged with the reason; temp files of writers that are no longer running
 * are removed. The tensors are views into one buffer read from the file.
 */
export function loadLatestCheckpoint(dir: string, log: (line: string) => void): LoadedCheckpoint | null {
  const folder = checkpointsDir(dir);
  removeStaleTemps(folder, log);
  for (const { file, step } of listCheckpoints(folder)) {
    const path = join(folder, file);
    let bytes: Uint8Array;
    try {
      bytes = readFileSync(path);
    } catch (err) {
      log(`checkpoint: skipped ${path}: cannot read it: ${(err as Error).message}`);
      continue;
    }
    try {
      return { path, ...decodeCheckpoint(bytes, step) };
    } catch (err) {
      log(`checkpoint: skipped ${path}: ${withoutCode(err)}`);
    }
  }
  return null;
}
