// `loramesh pool` end to end in one process (coordinator/pool/pool.ts): a tenant uploads data and submits
// runs at different times over HTTP; each run's PEFT files, fetched over HTTP, are byte-identical to the
// same run trained alone (`train --in-process` on the same file and settings). A pool closed mid-run and
// started again on its folder resumes the run from its checkpoint, and it still ends byte-identical.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import '../../helpers/backend.ts';
import { demoTaskData, examplesFor } from '../../../coordinator/io/dataset.ts';
import { type ModelDir, openModelDir } from '../../../coordinator/io/model-dir.ts';
import { Pool } from '../../../coordinator/pool/pool.ts';
import { PoolRegistry } from '../../../coordinator/pool/registry.ts';
import { runTraining } from '../../../coordinator/run/train.ts';
import { writeTinyModelDir } from '../../helpers/tiny-model.ts';

const ADMIN = 'pool-admin';
let root = '';
let model: ModelDir;
let dataFile = '';
before(async () => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-pool-'));
  writeTinyModelDir(join(root, 'model'), 4);
  model = await openModelDir(join(root, 'model'));
  dataFile = join(root, 'task.jsonl');
  const samples = demoTaskData(80, 1, 21).train;
  writeFileSync(
    dataFile,
    samples.map((s) => JSON.stringify({ prompt: `${s.tag}:${s.input}=`, completion: s.output })).join('\n') + '\n',
  );
});
after(() => rmSync(root, { recursive: true, force: true }));

const RUN_A = {
  lora: { r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] },
  train: { steps: 5, globalBatch: 8, microBatch: 2, lr: 1e-2, seed: 3 },
  data: { maxTokens: 24, evalFraction: 0.1 },
};
// B computes with relaxed-fma beside A's simd128: each run selects its own variant before it computes
const RUN_B = {
  lora: { r: 8, alpha: 8, targetModules: ['k_proj', 'o_proj'] },
  train: { steps: 4, globalBatch: 6, microBatch: 3, lr: 5e-3, seed: 5 },
  data: { maxTokens: 20 },
  arithmetic: 'relaxed-fma',
};
const RUN_C = {
  lora: { r: 2, alpha: 4, targetModules: ['up_proj'] },
  train: { steps: 12, globalBatch: 4, microBatch: 2, lr: 1e-2, seed: 8 },
  checkpointEvery: 2,
};

async function api(pool: Pool, method: string, path: string, token: string, body?: unknown, raw?: Buffer) {
  const res = await fetch(`${pool.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}` },
    body: raw ? new Uint8Array(raw) : body === undefined ? undefined : JSON.stringify(body),
  });
  const bytes = Buffer.from(await res.arrayBuffer());
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(bytes.toString());
  } catch {}
  return { status: res.status, json, bytes };
}

/** The same run alone, as `train --in-process` trains it: its adapter_model.safetensors. */
async function alone(name: string, run: typeof RUN_A | typeof RUN_B | typeof RUN_C): Promise<Buffer> {
  const data: { maxTokens?: number; evalFraction?: number } = 'data' in run ? run.data : {};
  const spec = {
    kind: 'jsonl' as const,
    path: dataFile,
    ...(data.maxTokens !== undefined ? { maxTokens: data.maxTokens } : {}),
    pack: false,
    evalFraction: data.evalFraction ?? 0,
    seed: run.train.seed,
  };
  const examples = await examplesFor(spec, model, () => {});
  const { data: _d, ...settings } = run as Record<string, unknown>;
  await runTraining({
    model,
    examples: examples.train,
    evalExamples: examples.eval.length > 0 ? examples.eval : undefined,
    config: {
      run: { ...(settings as typeof RUN_C), data: spec },
      deployment: { outDir: join(root, 'alone'), runId: name, inProcess: true, backend: 'wasm', localWorkers: 0 },
    } as never,
    progress: false,
    log: () => {},
  });
  return readFileSync(join(root, 'alone', name, 'adapter_model.safetensors'));
}

test('runs submitted at different times end byte-identical to each run alone; a restarted pool resumes', async () => {
  const dir = join(root, 'pool');
  let pool = await Pool.start({ dir, model, adminToken: ADMIN, inProcess: true, log: () => {} });
  let closed = false;
  try {
    const tenant = await api(pool, 'POST', '/pool/api/tenants', ADMIN, { name: 'lab' });
    const token = tenant.json.token as string;
    const up = await api(pool, 'PUT', '/pool/api/uploads?name=task.jsonl', token, undefined, readFileSync(dataFile));
    assert.equal(up.status, 201, up.bytes.toString());
    const uploadId = (up.json.upload as { id: string }).id;
    const submit = async (run: unknown, weight = 1) => {
      const r = await api(pool, 'POST', '/pool/api/runs', token, { uploadId, run, weight });
      assert.equal(r.status, 201, r.bytes.toString());
      return (r.json.run as { id: string }).id;
    };
    const a = await submit(RUN_A, 3);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const b = await submit(RUN_B);
    for (const id of [a, b]) assert.equal((await pool.settled(id))?.state, 'done', id);
    assert.equal(pool.baseLoads, 1, 'one copy of the base in the pool process, whatever the number of runs');
    for (const [id, run, name] of [
      [a, RUN_A, 'A'],
      [b, RUN_B, 'B'],
    ] as const) {
      const fetched = await api(pool, 'GET', `/pool/api/runs/${id}/files/adapter_model.safetensors`, token);
      assert.equal(fetched.status, 200);
      assert.ok(
        fetched.bytes.equals(await alone(name, run)),
        `run ${name}: the fetched adapter is the run alone's, byte for byte`,
      );
    }

    // a third run, closed at step ≥ 4 (checkpoints every 2 steps) and resumed by a new pool on the folder
    const c = await submit(RUN_C);
    for (let i = 0; i < 600 && (pool.registry.runById(c)?.step ?? 0) < 4; i++)
      await new Promise((resolve) => setTimeout(resolve, 20));
    await pool.close();
    closed = true;
    const registry = PoolRegistry.open(join(dir, 'pool.sqlite'));
    const stopped = registry.runById(c)!;
    registry.close();
    const stoppedAt = stopped.step;
    assert.equal(stopped.state, 'running', 'a run stopped by the pool closing stays unfinished');
    assert.ok(stoppedAt >= 4 && stoppedAt < RUN_C.train.steps, `stopped mid-run at step ${stoppedAt}`);
    pool = await Pool.start({ dir, model, adminToken: ADMIN, inProcess: true, log: () => {} });
    closed = false;
    assert.equal((await pool.settled(c))?.state, 'done');
    const fetched = await api(pool, 'GET', `/pool/api/runs/${c}/files/adapter_model.safetensors`, token);
    assert.ok(fetched.bytes.equals(await alone('C', RUN_C)), 'the resumed run ends as the run alone');
  } finally {
    // a failed assertion must not leave the server holding the test process open
    if (!closed) await pool.close();
  }
});
