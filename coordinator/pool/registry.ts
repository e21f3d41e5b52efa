/**
 * The standing pool's registry (issue 18): tenants, their uploads and their runs, in one SQLite file
 * (node-sqlite3-wasm: SQLite compiled to WebAssembly, writing through Node's fs, so it installs from
 * the registry alone). Every change is one transaction, committed (and fsynced: the VFS's xSync is
 * fs.fsyncSync, with synchronous=FULL) before the call returns, so what the pool has acknowledged to a
 * client survives the process being killed. Quotas are checked inside the same transaction as the
 * change they limit. One process holds a pool folder (its lock, like a run folder's), so no other
 * writer races these transactions.
 *
 * Tenant tokens are stored as their sha256 only; the token itself is shown once, when it is made.
 */
import { createHash } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { nanoid } from 'nanoid';
import { optionalPackage } from '../../node/optional-package.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';

export type RunState = 'queued' | 'running' | 'done' | 'failed' | 'cancelled';
export const RUN_STATES: readonly RunState[] = ['queued', 'running', 'done', 'failed', 'cancelled'];
/** states a run can still leave: it counts against its tenant's concurrent runs, and a restart resumes it */
export const UNFINISHED: readonly RunState[] = ['queued', 'running'];

export interface Quotas {
  /** runs queued or running at once */
  maxConcurrentRuns: number;
  /** optimizer steps one run may ask for */
  maxSteps: number;
  /** bytes of all uploads the tenant keeps */
  maxUploadBytes: number;
}

/** Defaults for a tenant made without quotas (README, "A standing pool"). */
export const DEFAULT_QUOTAS: Quotas = { maxConcurrentRuns: 4, maxSteps: 10_000, maxUploadBytes: 256 << 20 };

export interface Tenant {
  id: string;
  name: string;
  createdAt: number;
  revokedAt: number | null;
  quotas: Quotas;
}

export interface Upload {
  id: string;
  tenantId: string;
  name: string;
  sha256: string;
  bytes: number;
  examples: number;
  /** where the pool stored it, relative to the pool folder */
  path: string;
  createdAt: number;
}

export interface PoolRun {
  id: string;
  tenantId: string;
  name: string;
  state: RunState;
  /** the run's settings as submitted (the pool's run config), JSON */
  config: unknown;
  uploadId: string;
  steps: number;
  weight: number;
  priority: number;
  submittedAt: number;
  finishedAt: number | null;
  /** last completed step (checkpointed) */
  step: number;
  error: string | null;
}

export interface NewRun {
  name: string;
  config: unknown;
  uploadId: string;
  steps: number;
  weight: number;
  priority: number;
}

const SCHEMA_VERSION = 1;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tenants (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  token_hash TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL,
  revoked_at INTEGER,
  max_runs INTEGER NOT NULL,
  max_steps INTEGER NOT NULL,
  max_upload_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
  id TEXT PRIMARY KEY,
  tenant_id TEXT NOT NULL REFERENCES tenants(id),
  name TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  examples INTEGER NOT NULL,
  path TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY,
  tenant_id TEXT NOT NULL REFERENCES tenants(id),
  name TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
  config TEXT NOT NULL,
  upload_id TEXT NOT NULL REFERENCES uploads(id),
  steps INTEGER NOT NULL,
  weight REAL NOT NULL,
  priority INTEGER NOT NULL,
  submitted_at INTEGER NOT NULL,
  finished_at INTEGER,
  step INTEGER NOT NULL DEFAULT 0,
  error TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs (tenant_id, submitted_at);
`;

type Row = Record<string, unknown>;
interface SqliteDatabase {
  exec(sql: string): void;
  run(sql: string, values?: unknown): { changes: number };
  all(sql: string, values?: unknown): Row[];
  get(sql: string, values?: unknown): Row | null;
  close(): void;
  readonly inTransaction: boolean;
}

const hashToken = (token: string) => createHash('sha256').update(token).digest('hex');

const tenantOf = (r: Row): Tenant => ({
  id: r.id as string,
  name: r.name as string,
  createdAt: Number(r.created_at),
  revokedAt: r.revoked_at === null ? null : Number(r.revoked_at),
  quotas: {
    maxConcurrentRuns: Number(r.max_runs),
    maxSteps: Number(r.max_steps),
    maxUploadBytes: Number(r.max_upload_bytes),
  },
});

const uploadOf = (r: Row): Upload => ({
  id: r.id as string,
  tenantId: r.tenant_id as string,
  name: r.name as string,
  sha256: r.sha256 as string,
  bytes: Number(r.bytes),
  examples: Number(r.examples),
  path: r.path as string,
  createdAt: Number(r.created_at),
});

const runOf = (r: Row): PoolRun => ({
  id: r.id as string,
  tenantId: r.tenant_id as string,
  name: r.name as string,
  state: r.state as RunState,
  config: JSON.parse(r.config as string),
  uploadId: r.upload_id as string,
  steps: Number(r.steps),
  weight: Number(r.weight),
  priority: Number(r.priority),
  submittedAt: Number(r.submitted_at),
  finishedAt: r.finished_at === null ? null : Number(r.finished_at),
  step: Number(r.step),
  error: (r.error as string | null) ?? null,
});

/** Checks quotas given for a new tenant, naming the field and value. */
export function checkQuotas(raw: Partial<Quotas>): Quotas {
  const quotas = { ...DEFAULT_QUOTAS, ...raw };
  for (const [field, value] of Object.entries(quotas))
    if (!Number.isSafeInteger(value) || value < 0)
      fail(ErrorCodes.CONFIG, `quota ${field} ${String(value)}: expected a whole number ≥ 0`);
  return quotas;
}

export class PoolRegistry {
  private constructor(
    private readonly db: SqliteDatabase,
    private readonly now: () => number,
  ) {}

  /**
   * Opens (or creates) the registry file; `now` is the clock (tests pass their own).
   * The SQLite VFS locks a database with a `<file>.lock` directory, which a writer killed mid-transaction
   * leaves behind (its journal is rolled back on open, as SQLite does). `ownsFolder`: the caller holds the
   * pool folder's lock, so no live process can hold this file and a leftover lock is a dead writer's:
   * it is removed. Without it a held file is refused with LM_ERR_LOCKED.
   */
  static open(file: string, options: { now?: () => number; ownsFolder?: boolean } = {}): PoolRegistry {
    // loaded on first use: the offline worker bundle leaves the pool's database out (scripts/bundle.mjs)
    const sqlite = optionalPackage<{ Database: new (file: string) => SqliteDatabase }>('node-sqlite3-wasm');
    if (!sqlite)
      fail(ErrorCodes.BACKEND, 'the pool needs node-sqlite3-wasm (npm install; the offline worker bundle has no pool)');
    const { Database } = sqlite;
    const lock = `${file}.lock`;
    if (existsSync(lock)) {
      if (!options.ownsFolder)
        fail(ErrorCodes.LOCKED, `${file} is held by another process (or a killed one left ${lock})`);
      rmSync(lock, { recursive: true, force: true });
    }
    const now = options.now ?? Date.now;
    const db = new Database(file);
    try {
      db.exec('PRAGMA journal_mode = DELETE; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;');
      db.exec(SCHEMA);
      const version = db.get("SELECT value FROM meta WHERE key = 'schema_version'");
      if (!version) db.run("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", [String(SCHEMA_VERSION)]);
      else if (Number(version.value) !== SCHEMA_VERSION)
        fail(
          ErrorCodes.STATE,
          `${file}: registry schema version ${String(version.value)}; this loramesh reads version ${SCHEMA_VERSION}`,
        );
    } catch (err) {
      db.close();
      throw err;
    }
    return new PoolRegistry(db, now);
  }

  close(): void {
    this.db.close();
  }

  /** Runs f as one transaction: all of its writes commit together, or none (f threw). */
  private transaction<T>(f: () => T): T {
    this.db.exec('BEGIN IMMEDIATE');
    try {
      const out = f();
      this.db.exec('COMMIT');
      return out;
    } catch (err) {
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
      throw err;
    }
  }

  // ---- tenants ----

  /** A new tenant and its token (shown only now: the registry keeps its hash). */
  createTenant(name: string, quotas: Partial<Quotas> = {}): { tenant: Tenant; token: string } {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name))
      fail(ErrorCodes.CONFIG, `tenant name ${JSON.stringify(name)}: expected 1–64 of A–Z a–z 0–9 _ . -`);
    const q = checkQuotas(quotas);
    const token = `lmt_${nanoid(32)}`;
    const id = `t_${nanoid(10)}`;
    return this.transaction(() => {
      if (this.db.get('SELECT 1 FROM tenants WHERE name = ?', [name]))
        fail(ErrorCodes.CONFIG, `tenant name ${JSON.stringify(name)} is taken`);
      this.db.run(
        `INSERT INTO tenants (id, name, token_hash, created_at, revoked_at, max_runs, max_steps, max_upload_bytes)
         VALUES (?, ?, ?, ?, NULL, ?, ?, ?)`,
        [id, name, hashToken(token), this.now(), q.maxConcurrentRuns, q.maxSteps, q.maxUploadBytes],
      );
      return { tenant: this.tenant(id)!, token };
    });
  }

  tenant(id: string): Tenant | null {
    const r = this.db.get('SELECT * FROM tenants WHERE id = ?', [id]);
    return r ? tenantOf(r) : null;
  }

  tenants(): Tenant[] {
    return this.db.all('SELECT * FROM tenants ORDER BY created_at, id').map(tenantOf);
  }

  /** The live tenant whose token this is; null for an unknown or revoked token. */
  authenticate(token: string): Tenant | null {
    if (typeof token !== 'string' || token.length === 0 || token.length > 200) return null;
    const r = this.db.get('SELECT * FROM tenants WHERE token_hash = ? AND revoked_at IS NULL', [hashToken(token)]);
    return r ? tenantOf(r) : null;
  }

  /** Revokes a tenant's token: it authenticates no more. Its runs keep their state (an admin may cancel them). */
  revokeTenant(id: string): void {
    this.transaction(() => {
      const changed = this.db.run('UPDATE tenants SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL', [
        this.now(),
        id,
      ]).changes;
      if (changed === 0 && !this.tenant(id)) fail(ErrorCodes.NOT_FOUND, `no tenant ${id}`);
    });
  }

  // ---- uploads ----

  /** Bytes a tenant's uploads take now. */
  uploadBytes(tenantId: string): number {
    const r = this.db.get('SELECT COALESCE(SUM(bytes), 0) AS bytes FROM uploads WHERE tenant_id = ?', [tenantId]);
    return Number(r?.bytes ?? 0);
  }

  /**
   * Refuses an upload of `bytes` that would take the tenant over its quota (LM_ERR_QUOTA), before
   * anything is stored: the HTTP layer calls it with the request's declared length.
   */
  checkUpload(tenantId: string, bytes: number): void {
    const tenant = this.tenant(tenantId) ?? fail(ErrorCodes.NOT_FOUND, `no tenant ${tenantId}`);
    const used = this.uploadBytes(tenantId);
    if (used + bytes > tenant.quotas.maxUploadBytes)
      fail(
        ErrorCodes.QUOTA,
        `upload of ${bytes} bytes: tenant ${tenant.name} keeps ${used} of its ${tenant.quotas.maxUploadBytes} bytes`,
      );
  }

  /** Records a validated, stored upload (the quota checked again in the same transaction). */
  addUpload(tenantId: string, upload: Omit<Upload, 'id' | 'tenantId' | 'createdAt'>): Upload {
    const id = `u_${nanoid(10)}`;
    return this.transaction(() => {
      this.checkUpload(tenantId, upload.bytes);
      this.db.run(
        `INSERT INTO uploads (id, tenant_id, name, sha256, bytes, examples, path, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
        [id, tenantId, upload.name, upload.sha256, upload.bytes, upload.examples, upload.path, this.now()],
      );
      return this.upload(tenantId, id)!;
    });
  }

  /** The tenant's upload of this name and content, if it has one. */
  findUpload(tenantId: string, name: string, sha256: string): Upload | null {
    const r = this.db.get(
      'SELECT * FROM uploads WHERE tenant_id = ? AND name = ? AND sha256 = ? ORDER BY created_at LIMIT 1',
      [tenantId, name, sha256],
    );
    return r ? uploadOf(r) : null;
  }

  /** The tenant's upload; null if there is none by that id for this tenant (another tenant's included). */
  upload(tenantId: string, id: string): Upload | null {
    const r = this.db.get('SELECT * FROM uploads WHERE id = ? AND tenant_id = ?', [id, tenantId]);
    return r ? uploadOf(r) : null;
  }

  // ---- runs ----

  /** A new queued run, its quotas checked in the same transaction. */
  submitRun(tenantId: string, run: NewRun): PoolRun {
    const id = `r_${nanoid(10)}`;
    return this.transaction(() => {
      const tenant = this.tenant(tenantId) ?? fail(ErrorCodes.NOT_FOUND, `no tenant ${tenantId}`);
      if (tenant.revokedAt !== null) fail(ErrorCodes.AUTH, `tenant ${tenant.name} is revoked`);
      if (!this.upload(tenantId, run.uploadId)) fail(ErrorCodes.NOT_FOUND, `no upload ${run.uploadId}`);
      if (!Number.isSafeInteger(run.steps) || run.steps < 1)
        fail(ErrorCodes.CONFIG, `steps ${String(run.steps)}: expected a whole number ≥ 1`);
      if (run.steps > tenant.quotas.maxSteps)
        fail(
          ErrorCodes.QUOTA,
          `steps ${run.steps}: tenant ${tenant.name} may ask for at most ${tenant.quotas.maxSteps}`,
        );
      const active = Number(
        this.db.get(
          `SELECT COUNT(*) AS n FROM runs WHERE tenant_id = ? AND state IN (${UNFINISHED.map(() => '?').join(', ')})`,
          [tenantId, ...UNFINISHED],
        )?.n ?? 0,
      );
      if (active >= tenant.quotas.maxConcurrentRuns)
        fail(
          ErrorCodes.QUOTA,
          `tenant ${tenant.name} has ${active} runs queued or running, its quota is ${tenant.quotas.maxConcurrentRuns}`,
        );
      this.db.run(
        `INSERT INTO runs (id, tenant_id, name, state, config, upload_id, steps, weight, priority, submitted_at)
         VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)`,
        [
          id,
          tenantId,
          run.name,
          JSON.stringify(run.config),
          run.uploadId,
          run.steps,
          run.weight,
          run.priority,
          this.now(),
        ],
      );
      return this.runById(id)!;
    });
  }

  /** Any run by id (the pool's own use and the admin's). */
  runById(id: string): PoolRun | null {
    const r = this.db.get('SELECT * FROM runs WHERE id = ?', [id]);
    return r ? runOf(r) : null;
  }

  /** The tenant's run; null if it has none by that id (another tenant's run looks the same as none). */
  run(tenantId: string, id: string): PoolRun | null {
    const r = this.db.get('SELECT * FROM runs WHERE id = ? AND tenant_id = ?', [id, tenantId]);
    return r ? runOf(r) : null;
  }

  /** A tenant's runs (all runs for null: the admin view), oldest first. */
  runs(tenantId: string | null): PoolRun[] {
    const rows =
      tenantId === null
        ? this.db.all('SELECT * FROM runs ORDER BY submitted_at, id')
        : this.db.all('SELECT * FROM runs WHERE tenant_id = ? ORDER BY submitted_at, id', [tenantId]);
    return rows.map(runOf);
  }

  /** Runs a restarted pool resumes: queued or running, in submission order. */
  unfinished(): PoolRun[] {
    return this.db
      .all(`SELECT * FROM runs WHERE state IN (${UNFINISHED.map(() => '?').join(', ')}) ORDER BY submitted_at, id`, [
        ...UNFINISHED,
      ])
      .map(runOf);
  }

  /** The pool moves a run on: running, a completed step, done or failed (finished states are final). */
  update(id: string, change: { state?: RunState; step?: number; error?: string }): PoolRun {
    return this.transaction(() => {
      const run = this.runById(id) ?? fail(ErrorCodes.NOT_FOUND, `no run ${id}`);
      if (!UNFINISHED.includes(run.state))
        fail(ErrorCodes.STATE, `run ${id} is ${run.state}; a finished run does not change`);
      const state = change.state ?? run.state;
      if (!RUN_STATES.includes(state)) fail(ErrorCodes.CONFIG, `run state ${JSON.stringify(state)}`);
      const finished = UNFINISHED.includes(state) ? null : this.now();
      this.db.run('UPDATE runs SET state = ?, step = ?, error = ?, finished_at = ? WHERE id = ?', [
        state,
        change.step ?? run.step,
        change.error ?? run.error,
        finished,
        id,
      ]);
      return this.runById(id)!;
    });
  }

  /** Cancels the tenant's unfinished run (null tenant: the admin). Another tenant's run is "not found". */
  cancel(tenantId: string | null, id: string): PoolRun {
    const run = tenantId === null ? this.runById(id) : this.run(tenantId, id);
    if (!run) fail(ErrorCodes.NOT_FOUND, `no run ${id}`);
    if (!UNFINISHED.includes(run.state)) fail(ErrorCodes.STATE, `run ${id} is already ${run.state}`);
    return this.update(id, { state: 'cancelled' });
  }
}
