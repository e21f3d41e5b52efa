/**
 * runs/<id>/run.lock: one process at a time trains in a run folder. The file is created with
 * O_EXCL and names its holder (pid, host, start time); a second process gets LM_ERR_LOCKED naming
 * that holder. A lock left by a dead process on this host (SIGKILL, power loss) is taken over, so
 * `train --resume` after a crash needs no manual step. A lock from another host is never taken
 * over: this host cannot tell whether that process still runs.
 */
import { closeSync, linkSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { isAbsolute, join, relative } from 'node:path';
import { ErrorCodes, LoraMeshError } from '../../shared/errors.ts';

export const LOCK_FILE = 'run.lock';
/** A lock file that does not parse is being written (held) until it is this old, then stale. */
const UNREADABLE_GRACE_MS = 5000;

export interface LockHolder {
  pid: number;
  host: string;
  /** ISO time the lock was taken */
  startedAt: string;
  /** Linux: field 22 of /proc/<pid>/stat (clock ticks after boot), which tells a recycled PID apart; null elsewhere */
  processStart: number | null;
}

export interface RunLock {
  readonly path: string;
  readonly holder: LockHolder;
  /** Removes run.lock if it still names this process; idempotent. */
  release(): void;
}

/** Field 22 ('starttime') of /proc/<pid>/stat, or null where there is no /proc or the process is gone. */
export function processStartTime(pid: number | 'self'): number | null {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // Field 2 (comm) is in parentheses and may hold spaces or ')': count fields after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[22 - 3]);
  return Number.isFinite(ticks) ? ticks : null;
}

/** Takes `<dir>/run.lock` or throws LM_ERR_LOCKED naming the process that holds it. */
export function acquireRunLock(dir: string, log: (line: string) => void = (line) => console.error(line)): RunLock {
  const path = join(dir, LOCK_FILE);
  const shown = displayPath(dir);
  const self: LockHolder = {
    pid: process.pid,
    host: hostname(),
    startedAt: new Date().toISOString(),
    processStart: processStartTime('self'),
  };
  const content = JSON.stringify(self) + '\n';
  for (let attempt = 0; attempt < 3; attempt++) {
    if (createExclusive(path, content)) return holdLock(path, self);
    const raw = readOrNull(path);
    if (raw === null) continue; // released between our create and read: try again
    const holder = parseHolder(raw);
    const stale = holder ? staleReason(holder, self.host) : unreadableStaleReason(path);
    if (!stale) throw lockedError(shown, holder);
    // Take over: move the stale lock aside under a name of our own (of several processes trying,
    // exactly one rename succeeds), check that what moved is the stale lock we judged, drop it and
    // create ours with O_EXCL, which decides any remaining race.
    const aside = `${path}.stale-${process.pid}-${attempt}`;
    try {
      renameSync(path, aside);
    } catch {
      continue; // another process moved it first
    }
    if (readOrNull(aside) !== raw) {
      // a live lock replaced the stale one between our read and the move: put it back
      try {
        linkSync(aside, path);
        unlinkSync(aside);
      } catch {
        // the path was taken again meanwhile; the moved file stays for a person to look at
      }
      continue;
    }
    unlinkSync(aside);
    if (createExclusive(path, content)) {
      log(`${shown}: took over run.lock of ${holder ? describeHolder(holder) : 'an unknown process'} (${stale})`);
      return holdLock(path, self);
    }
  }
  const holder = parseHolder(readOrNull(path) ?? '');
  throw lockedError(shown, holder);
}

function holdLock(path: string, self: LockHolder): RunLock {
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    process.off('exit', release);
    const current = parseHolder(readOrNull(path) ?? '');
    const ours = current?.pid === self.pid && current.processStart === self.processStart;
    if (ours && current?.startedAt === self.startedAt) {
      try {
        unlinkSync(path);
      } catch {
        // already gone
      }
    }
  };
  // Fallback for paths that end the process without reaching release(); a SIGKILL leaves the
  // file behind and the next process takes it over.
  process.on('exit', release);
  return { path, holder: self, release };
}

function createExclusive(path: string, content: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'wx');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    writeSync(fd, content);
  } finally {
    closeSync(fd);
  }
  return true;
}

function readOrNull(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

function parseHolder(raw: string): LockHolder | null {
  try {
    const h = JSON.parse(raw) as Partial<LockHolder>;
    const ok =
      Number.isInteger(h.pid) &&
      (h.pid as number) > 0 &&
      typeof h.host === 'string' &&
      typeof h.startedAt === 'string' &&
      (h.processStart === null || typeof h.processStart === 'number');
    return ok ? (h as LockHolder) : null;
  } catch {
    return null;
  }
}

/** Why a well-formed lock is stale, or null when its holder may still be running. */
function staleReason(holder: LockHolder, host: string): string | null {
  if (holder.host !== host) return null;
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return `pid ${holder.pid} is not running`;
    // EPERM: alive, owned by another user
  }
  const start = processStartTime(holder.pid);
  if (holder.processStart !== null && start !== null && start !== holder.processStart) {
    return `pid ${holder.pid} now belongs to another process`;
  }
  return null;
}

function unreadableStaleReason(path: string): string | null {
  let ageMs: number;
  try {
    ageMs = Date.now() - statSync(path).mtimeMs;
  } catch {
    return null;
  }
  if (ageMs >= UNREADABLE_GRACE_MS) return `the lock file was unreadable and ${(ageMs / 1000).toFixed(0)} s old`;
  return null;
}

function lockedError(shown: string, holder: LockHolder | null): LoraMeshError {
  if (!holder) {
    return new LoraMeshError(
      ErrorCodes.LOCKED,
      `${shown} is locked: its run.lock is being written or unreadable; ` +
        `if no process uses the folder, remove ${join(shown, LOCK_FILE)} by hand`,
    );
  }
  const remote =
    holder.host !== hostname()
      ? `; a lock from another host is never taken over: if that host is gone, remove ${join(shown, LOCK_FILE)} by hand`
      : '; stop that process or wait for it';
  return new LoraMeshError(ErrorCodes.LOCKED, `${shown} is in use by ${describeHolder(holder)}${remote}`);
}

function describeHolder(holder: LockHolder): string {
  return `pid ${holder.pid} on host ${holder.host} since ${holder.startedAt}`;
}

/** The folder as a person would type it: relative to the working directory when inside it. */
export function displayPath(dir: string): string {
  const rel = relative(process.cwd(), dir);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : dir;
}
