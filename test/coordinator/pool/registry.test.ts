// The pool's registry (coordinator/pool/registry.ts): tenants and their tokens, isolation between
// tenants, quotas checked before anything is stored, whole transactions, and durability: a writer
// SIGKILLed mid-stream loses no acknowledged change and leaves a consistent file.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { PoolRegistry } from '../../../coordinator/pool/registry.ts';

const folder = () => mkdtempSync(join(tmpdir(), 'loramesh-registry-'));
const upload = { name: 'data.jsonl', sha256: 'cd'.repeat(32), bytes: 1000, examples: 10, path: 'uploads/x.jsonl' };
const newRun = (uploadId: string, extra = {}) => ({
  name: 'run',
  config: { rank: 8, targets: ['q_proj', 'v_proj'] },
  uploadId,
  steps: 100,
  weight: 1,
  priority: 0,
  ...extra,
});

test('tenants: a token authenticates its tenant until revoked; only its hash is stored', () => {
  const dir = folder();
  try {
    const file = join(dir, 'pool.sqlite');
    let clock = 1000;
    const registry = PoolRegistry.open(file, { now: () => clock++ });
    const a = registry.createTenant('team-a');
    const b = registry.createTenant('team-b', { maxConcurrentRuns: 1 });
    assert.match(a.token, /^lmt_[A-Za-z0-9_-]{32}$/);
    assert.equal(registry.authenticate(a.token)?.id, a.tenant.id);
    assert.equal(registry.authenticate(b.token)?.name, 'team-b');
    assert.equal(registry.authenticate('lmt_wrong'), null);
    assert.equal(registry.authenticate(''), null);
    assert.deepEqual(b.tenant.quotas, { maxConcurrentRuns: 1, maxSteps: 10_000, maxUploadBytes: 256 << 20 });
    assert.throws(() => registry.createTenant('team-a'), /LM_ERR_CONFIG.*taken/);
    assert.throws(() => registry.createTenant('bad name!'), /LM_ERR_CONFIG: tenant name "bad name!"/);
    assert.throws(() => registry.createTenant('c', { maxSteps: -1 }), /LM_ERR_CONFIG: quota maxSteps -1/);
    registry.revokeTenant(a.tenant.id);
    assert.equal(registry.authenticate(a.token), null, 'revoked');
    assert.throws(() => registry.revokeTenant('t_none'), /LM_ERR_NOT_FOUND/);
    registry.close();
    const bytes = readFileSync(file);
    assert.equal(bytes.includes(Buffer.from(a.token)), false, 'the token itself is not in the file');
    assert.equal(bytes.includes(Buffer.from('team-a')), true, 'the file is the registry (sanity)');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("isolation: a tenant cannot see, read or cancel another tenant's runs and uploads", () => {
  const dir = folder();
  try {
    const registry = PoolRegistry.open(join(dir, 'pool.sqlite'));
    const a = registry.createTenant('a').tenant;
    const b = registry.createTenant('b').tenant;
    const ua = registry.addUpload(a.id, upload);
    const run = registry.submitRun(a.id, newRun(ua.id));
    assert.equal(registry.run(a.id, run.id)?.state, 'queued');
    assert.equal(registry.run(b.id, run.id), null);
    assert.equal(registry.upload(b.id, ua.id), null);
    assert.deepEqual(registry.runs(b.id), []);
    assert.deepEqual(
      registry.runs(null).map((r) => r.id),
      [run.id],
      'the admin sees every run',
    );
    assert.throws(() => registry.cancel(b.id, run.id), /LM_ERR_NOT_FOUND: no run/);
    assert.throws(() => registry.submitRun(b.id, newRun(ua.id)), /LM_ERR_NOT_FOUND: no upload/, "A's upload");
    assert.equal(registry.cancel(a.id, run.id).state, 'cancelled');
    assert.throws(() => registry.cancel(a.id, run.id), /LM_ERR_STATE: run .* already cancelled/);
    registry.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('quotas: uploads, steps and concurrent runs, refused with LM_ERR_QUOTA before anything is stored', () => {
  const dir = folder();
  try {
    const registry = PoolRegistry.open(join(dir, 'pool.sqlite'));
    const t = registry.createTenant('t', { maxUploadBytes: 2500, maxConcurrentRuns: 2, maxSteps: 500 }).tenant;
    const u = registry.addUpload(t.id, upload);
    registry.addUpload(t.id, upload);
    assert.throws(
      () => registry.checkUpload(t.id, 501),
      /LM_ERR_QUOTA: upload of 501 bytes: tenant t keeps 2000 of its 2500/,
    );
    registry.checkUpload(t.id, 500);
    assert.throws(() => registry.addUpload(t.id, { ...upload, bytes: 501 }), /LM_ERR_QUOTA/);
    assert.equal(registry.uploadBytes(t.id), 2000, 'the refused upload left nothing');
    assert.throws(() => registry.submitRun(t.id, newRun(u.id, { steps: 501 })), /LM_ERR_QUOTA: steps 501/);
    assert.throws(() => registry.submitRun(t.id, newRun(u.id, { steps: 0 })), /LM_ERR_CONFIG: steps 0/);
    const first = registry.submitRun(t.id, newRun(u.id));
    registry.submitRun(t.id, newRun(u.id));
    assert.throws(() => registry.submitRun(t.id, newRun(u.id)), /LM_ERR_QUOTA: tenant t has 2 runs queued or running/);
    assert.equal(registry.runs(t.id).length, 2, 'the refused run left nothing');
    registry.update(first.id, { state: 'running' });
    registry.update(first.id, { step: 100, state: 'done' });
    assert.throws(() => registry.update(first.id, { step: 3 }), /LM_ERR_STATE.*finished/);
    registry.submitRun(t.id, newRun(u.id)); // a finished run frees its slot
    assert.deepEqual(
      registry.unfinished().map((r) => r.state),
      ['queued', 'queued'],
    );
    registry.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('durability: a writer SIGKILLed mid-stream keeps every acknowledged run, and the file is consistent', async () => {
  const dir = folder();
  try {
    const file = join(dir, 'pool.sqlite');
    const helper = new URL('../../helpers/pool-registry-writer.ts', import.meta.url).pathname;
    const child = spawn(process.execPath, ['--import', 'tsx', helper, file], { stdio: ['ignore', 'pipe', 'inherit'] });
    const acked: string[] = [];
    await new Promise<void>((resolve, reject) => {
      let buffer = '';
      child.stdout.on('data', (chunk: Buffer) => {
        buffer += chunk.toString();
        const lines = buffer.split('\n');
        buffer = lines.pop()!;
        for (const line of lines) if (line.startsWith('acked ')) acked.push(line.slice(6));
        if (acked.length >= 40 && child.exitCode === null) {
          child.kill('SIGKILL');
          resolve();
        }
      });
      child.on('exit', (code, signal) => {
        if (signal !== 'SIGKILL') reject(new Error(`writer exited early: ${code} ${signal}`));
      });
    });
    await new Promise((resolve) => child.once('close', resolve));
    // killed mid-transaction, the writer may have left the VFS's lock: only the folder's owner clears it
    if (existsSync(`${file}.lock`))
      assert.throws(() => PoolRegistry.open(file), /LM_ERR_LOCKED: .* is held by another process/);
    const registry = PoolRegistry.open(file, { ownsFolder: true });
    const stored = new Set(registry.runs(null).map((r) => r.id));
    const lost = acked.filter((id) => !stored.has(id));
    assert.deepEqual(lost, [], `acknowledged runs lost after SIGKILL (${acked.length} acked, ${stored.size} stored)`);
    assert.ok(stored.size >= acked.length);
    registry.close();
    // the file passes SQLite's own check, and no half-written transaction is left (no journal left behind)
    const { Database } = (await import('node-sqlite3-wasm')).default as unknown as {
      Database: new (f: string) => { get(s: string): Record<string, unknown>; close(): void };
    };
    const db = new Database(file);
    assert.equal(db.get('PRAGMA integrity_check').integrity_check, 'ok');
    db.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a registry written by another schema version is refused, naming both', () => {
  const dir = folder();
  try {
    const file = join(dir, 'pool.sqlite');
    PoolRegistry.open(file).close();
    const registry = PoolRegistry.open(file);
    (registry as unknown as { db: { run(s: string): void } }).db.run(
      "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
    );
    registry.close();
    assert.throws(() => PoolRegistry.open(file), /LM_ERR_STATE: .*schema version 99; this loramesh reads version 1/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a lock left by a killed writer: refused with LM_ERR_LOCKED, cleared by the pool folder's owner", () => {
  const dir = folder();
  try {
    const file = join(dir, 'pool.sqlite');
    const first = PoolRegistry.open(file);
    const t = first.createTenant('t').tenant;
    first.close();
    mkdirSync(`${file}.lock`); // what the VFS leaves when its process dies inside a transaction
    assert.throws(() => PoolRegistry.open(file), /LM_ERR_LOCKED: .*pool\.sqlite is held by another process/);
    const again = PoolRegistry.open(file, { ownsFolder: true });
    assert.equal(again.tenant(t.id)?.name, 't');
    again.createTenant('u'); // writable: the lock is the VFS's own again
    again.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
