// The pool's HTTP API (coordinator/pool/api.ts) on a real server: tenant isolation (another tenant's
// run cannot be listed, read, fetched or cancelled, each refused with a coded HTTP error), an upload
// over quota refused before a byte is stored, and bad submissions refused with the file:line or the
// field named, leaving the registry as it was.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { loadDataset } from '../../../coordinator/io/dataset.ts';
import { openModelDir } from '../../../coordinator/io/model-dir.ts';
import { DEMO_MODEL_DIR } from '../../../coordinator/io/paths.ts';
import { poolApi } from '../../../coordinator/pool/api.ts';
import { PoolRegistry } from '../../../coordinator/pool/registry.ts';

const ADMIN = 'admin-secret-token';
const model = await openModelDir(DEMO_MODEL_DIR);
let dir: string;
let registry: PoolRegistry;
let server: Server;
let base: string;
const submitted: string[] = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'loramesh-pool-api-'));
  registry = PoolRegistry.open(join(dir, 'pool.sqlite'));
  const handle = poolApi({
    registry,
    base: { model: DEMO_MODEL_DIR, config: model.config, baseFormat: null },
    dir,
    adminToken: ADMIN,
    validateUpload: async (path) =>
      (await loadDataset(path, model.tokenizer, { maxTokens: 32, mode: 'truncate', evalFraction: 0, seed: 1 })).train
        .length,
    onSubmit: (run) => submitted.push(run.id),
  });
  server = createServer((req, res) => {
    if (!handle(req, res)) res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(() => {
  server.close();
  registry.close();
  rmSync(dir, { recursive: true, force: true });
});

async function call(method: string, path: string, token: string | null, body?: unknown, raw?: string) {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  const payload = raw ?? (body === undefined ? undefined : JSON.stringify(body));
  const res = await fetch(`${base}${path}`, { method, headers, body: payload });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, json, text };
}

const GOOD = ['V:abc=CBA', 'V:hello=OLLEH', 'V:xyz=ZYX']
  .map((t) => JSON.stringify({ prompt: t.split('=')[0] + '=', completion: t.split('=')[1] }))
  .join('\n');
const RUN = {
  run: {
    lora: { r: 8, alpha: 16, targetModules: ['q_proj', 'v_proj'] },
    train: { steps: 20, globalBatch: 4, microBatch: 2 },
  },
};

async function tenant(name: string, quotas = {}) {
  const made = await call('POST', '/pool/api/tenants', ADMIN, { name, quotas });
  assert.equal(made.status, 201, made.text);
  return made.json.token as string;
}

test("isolation: tenant B cannot list, read, fetch, cancel or build on tenant A's run (coded HTTP errors)", async () => {
  const a = await tenant('alpha');
  const b = await tenant('beta');
  const up = await call('PUT', '/pool/api/uploads?name=train.jsonl', a, undefined, GOOD);
  assert.equal(up.status, 201, up.text);
  const upload = up.json.upload as { id: string; examples: number; bytes: number };
  assert.equal(upload.examples, 3);
  const sub = await call('POST', '/pool/api/runs', a, { uploadId: upload.id, name: 'reverse', ...RUN });
  assert.equal(sub.status, 201, sub.text);
  const runId = (sub.json.run as { id: string }).id;
  assert.deepEqual(submitted, [runId], 'the pool was told');

  assert.equal(((await call('GET', '/pool/api/runs', a)).json.runs as unknown[]).length, 1);
  assert.deepEqual((await call('GET', '/pool/api/runs', b)).json.runs, [], "B's list");
  for (const [method, path] of [
    ['GET', `/pool/api/runs/${runId}`],
    ['POST', `/pool/api/runs/${runId}/cancel`],
    ['GET', `/pool/api/runs/${runId}/files/adapter_model.safetensors`],
  ]) {
    const r = await call(method, path, b);
    assert.equal(r.status, 404, `${method} ${path}: ${r.text}`);
    assert.equal(r.json.error, 'LM_ERR_NOT_FOUND');
  }
  const reuse = await call('POST', '/pool/api/runs', b, { uploadId: upload.id, ...RUN });
  assert.deepEqual([reuse.status, reuse.json.error], [404, 'LM_ERR_NOT_FOUND'], "A's upload");
  for (const token of [null, 'lmt_not-a-token', ADMIN.slice(1)]) {
    const r = await call('GET', '/pool/api/runs', token);
    assert.deepEqual([r.status, r.json.error], [401, 'LM_ERR_AUTH'], `token ${token}`);
  }
  const asTenant = await call('POST', '/pool/api/tenants', a, { name: 'gamma' });
  assert.deepEqual([asTenant.status, asTenant.json.error], [401, 'LM_ERR_AUTH'], 'a tenant is no admin');
  // A itself: the run is queued, so no adapter yet; the admin sees it too
  const early = await call('GET', `/pool/api/runs/${runId}/files/adapter_model.safetensors`, a);
  assert.deepEqual([early.status, early.json.error], [409, 'LM_ERR_STATE']);
  assert.equal(((await call('GET', '/pool/api/runs', ADMIN)).json.runs as unknown[]).length, 1);
  const cancel = await call('POST', `/pool/api/runs/${runId}/cancel`, a);
  assert.equal((cancel.json.run as { state: string }).state, 'cancelled');
  // a revoked tenant's token stops working
  const id = (registry.authenticate(b) as { id: string }).id;
  assert.equal((await call('DELETE', `/pool/api/tenants/${id}`, ADMIN)).status, 200);
  assert.equal((await call('GET', '/pool/api/runs', b)).status, 401);
});

test('an upload over quota is refused before a byte is stored', async () => {
  const t = await tenant('small', { maxUploadBytes: 100 });
  const before = readdirSync(join(dir, 'uploads')).length;
  const big = 'x'.repeat(101);
  const r = await call('PUT', '/pool/api/uploads?name=big.jsonl', t, undefined, big);
  assert.deepEqual([r.status, r.json.error], [403, 'LM_ERR_QUOTA'], r.text);
  assert.match(r.json.message as string, /upload of 101 bytes: tenant small keeps 0 of its 100 bytes/);
  assert.equal(readdirSync(join(dir, 'uploads')).length, before, 'nothing stored');
  assert.equal(registry.uploadBytes((registry.authenticate(t) as { id: string }).id), 0);
});

test('bad input is refused at submit time with file:line or the field named; nothing is queued', async () => {
  const t = await tenant('careless');
  const broken = `${GOOD}\n{"prompt": "V:ab=", "completion": \n${GOOD}`;
  const r1 = await call('PUT', '/pool/api/uploads?name=broken.jsonl', t, undefined, broken);
  assert.deepEqual([r1.status, r1.json.error], [400, 'LM_ERR_DATA'], r1.text);
  assert.match(r1.json.message as string, /^broken\.jsonl:4: /, 'the line, named as the client knows the file');
  const r2 = await call('PUT', '/pool/api/uploads?name=notes.txt', t, undefined, GOOD);
  assert.deepEqual([r2.status, r2.json.error], [400, 'LM_ERR_DATA'], r2.text);
  const r3 = await call('PUT', '/pool/api/uploads?name=../../etc/passwd.jsonl', t, undefined, GOOD);
  assert.equal(r3.status, 201, 'a path is cut to its file name');
  assert.equal(existsSync(join(dir, '..', 'etc')), false);
  const uploadId = (r3.json.upload as { id: string }).id;
  const bad = async (run: unknown, pattern: RegExp) => {
    const r = await call('POST', '/pool/api/runs', t, { uploadId, run });
    assert.deepEqual([r.status, r.json.error], [400, 'LM_ERR_CONFIG'], r.text);
    assert.match(r.json.message as string, pattern);
  };
  await bad({ ...RUN.run, lora: { ...RUN.run.lora, targetModules: ['c_fc'] } }, /^run\.lora: .*c_fc/);
  await bad({ ...RUN.run, lora: { ...RUN.run.lora, r: 200 } }, /^run\.lora\.r 200 is larger than layer/);
  await bad({ ...RUN.run, train: { steps: -1 } }, /^run\.train: /);
  const notJson = await call('POST', '/pool/api/runs', t, undefined, '{"uploadId": ');
  assert.deepEqual([notJson.status, notJson.json.error], [400, 'LM_ERR_DECODE']);
  const missing = await call('POST', '/pool/api/runs', t, { uploadId: 'u_nope', ...RUN });
  assert.deepEqual([missing.status, missing.json.error], [404, 'LM_ERR_NOT_FOUND']);
  assert.deepEqual((await call('GET', '/pool/api/runs', t)).json.runs, [], 'nothing queued');
});

test('each token has a request budget: past it, 429 LM_ERR_RATE; another tenant is not affected', async () => {
  const limited = PoolRegistry.open(join(dir, 'limited.sqlite'));
  const handle = poolApi({
    registry: limited,
    base: { model: DEMO_MODEL_DIR, config: model.config, baseFormat: null },
    dir,
    adminToken: ADMIN,
    validateUpload: async () => 1,
    requestsPerSecond: 2, // 4 requests of burst
  });
  const slow = createServer((req, res) => {
    if (!handle(req, res)) res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => slow.listen(0, '127.0.0.1', resolve));
  const at = `http://127.0.0.1:${(slow.address() as AddressInfo).port}`;
  try {
    const get = async (token: string) => {
      const res = await fetch(`${at}/pool/api/runs`, { headers: { authorization: `Bearer ${token}` } });
      return { status: res.status, json: (await res.json()) as { error?: string } };
    };
    const [a, b] = ['a-lab', 'b-lab'].map((name) => limited.createTenant(name, {}).token);
    const answers = [];
    for (let i = 0; i < 8; i++) answers.push(await get(a));
    const refused = answers.filter((r) => r.status === 429);
    assert.ok(refused.length >= 3, `${refused.length} of 8 quick requests refused`);
    assert.ok(refused.every((r) => r.json.error === 'LM_ERR_RATE'));
    assert.equal(answers[0].status, 200);
    assert.equal((await get(b)).status, 200, "the other tenant's budget is its own");
    // an unknown token is refused for what it is, not counted against anyone
    assert.equal((await get('nobody')).json.error, 'LM_ERR_AUTH');
  } finally {
    slow.close();
    limited.close();
  }
});
