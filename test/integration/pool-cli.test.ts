// The pool from the command line, as the README shows it: `loramesh pool` in its own process, then
// `tenant add`, `submit`, `runs`, `fetch` and `cancel` against it. The fetched files are the run folder's;
// a refused submission (rank larger than the layer, a broken line, an unreadable file) exits 2 with the
// field or file:line named and uploads nothing; SIGINT stops the pool and SIGKILL + a restart resumes.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { demoTaskData } from '../../coordinator/io/dataset.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';
import { within } from '../helpers/wait.ts';

const cli = fileURLToPath(new URL('../../coordinator/cli.ts', import.meta.url));
let root = '';
before(() => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-pool-cli-'));
  writeTinyModelDir(join(root, 'model'), 2);
  const samples = demoTaskData(60, 1, 4).train;
  const lines = samples.map((s) => JSON.stringify({ prompt: `${s.tag}:${s.input}=`, completion: s.output }));
  writeFileSync(join(root, 'task.jsonl'), `${lines.join('\n')}\n`);
  writeFileSync(join(root, 'broken.jsonl'), `${lines.slice(0, 2).join('\n')}\n{"prompt": "V:ab=",\n`);
});
after(() => rmSync(root, { recursive: true, force: true }));

function startPool(): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      cli,
      'pool',
      '--dir',
      join(root, 'pool'),
      '--model',
      join(root, 'model'),
      '--port',
      '0',
      '--admin-token',
      'ADM',
      '--in-process',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  return within(
    60_000,
    'the pool to listen',
    new Promise((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        const url = /at (http:\/\/\S+) \(folder/.exec(out)?.[1];
        if (url) resolve({ child, url });
      });
      child.once('exit', (code) => reject(new Error(`pool exited ${code}: ${out}`)));
    }),
  );
}

function loramesh(env: Record<string, string>, ...args: string[]) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', cli, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** The tenant's runs straight from the API (polling through the CLI would take a process each time). */
async function runs(url: string, token: string): Promise<{ id: string; state: string; step: number }[]> {
  const res = await fetch(`${url}/pool/api/runs`, { headers: { authorization: `Bearer ${token}` } });
  return ((await res.json()) as { runs: { id: string; state: string; step: number }[] }).runs;
}

async function until(what: string, ms: number, check: () => Promise<boolean>): Promise<void> {
  await within(
    ms,
    what,
    (async () => {
      while (!(await check())) await new Promise((r) => setTimeout(r, 50));
    })(),
  );
}

/** `loramesh submit` of a data file in the test folder with RUN_FLAGS and `extra` flags after them. */
const submitRun = (env: Record<string, string>, file: string, steps: number, ...extra: string[]) =>
  loramesh(env, 'submit', '--data', join(root, file), '--steps', String(steps), ...RUN_FLAGS, ...extra);

const RUN_FLAGS = [
  '--rank',
  '4',
  '--targets',
  'q_proj,v_proj',
  '--global-batch',
  '4',
  '--micro-batch',
  '2',
  '--max-tokens',
  '24',
];

test('pool, tenant add, submit, runs, fetch, cancel; refusals exit 2 naming the field or line; SIGKILL and restart resume', async () => {
  let { child, url } = await startPool();
  try {
    const admin = loramesh({ LORAMESH_POOL: url }, 'tenant', 'add', 'lab', '--admin-token', 'ADM');
    assert.equal(admin.code, 0, admin.err);
    const token = /lmt_[\w-]+/.exec(admin.out)![0];
    const env = { LORAMESH_POOL: url, LORAMESH_POOL_TOKEN: token };
    const submitted = submitRun(env, 'task.jsonl', 3, '--name', 'first');
    assert.equal(submitted.code, 0, submitted.err);
    const id = /^(r_\S+)\s+queued/m.exec(submitted.out)![1];
    await until('the run to finish', 60_000, async () =>
      (await runs(url, token)).some((r) => r.id === id && r.state === 'done'),
    );
    assert.match(loramesh(env, 'runs').out, new RegExp(`${id}\\s+done\\s+step 3/3`));
    const out = join(root, 'fetched');
    assert.equal(loramesh(env, 'fetch', id, '--out', out).code, 0);
    for (const name of ['adapter_model.safetensors', 'adapter_config.json'])
      assert.ok(readFileSync(join(out, name)).equals(readFileSync(join(root, 'pool', 'runs', id, name))), name);
    const again = loramesh(env, 'cancel', id);
    assert.equal(again.code, 2);
    assert.match(again.err, /LM_ERR_STATE: run .* is already done/);

    const uploads = () => readdirSync(join(root, 'pool', 'uploads')).length;
    const before = uploads();
    const big = submitRun(env, 'task.jsonl', 3, '--rank', '999');
    assert.equal(big.code, 2);
    assert.match(big.err, /LM_ERR_CONFIG: run\.lora\.r 999 is larger than layer .*q_proj/);
    const broken = submitRun(env, 'broken.jsonl', 3);
    assert.equal(broken.code, 2);
    assert.match(broken.err, /LM_ERR_DATA: broken\.jsonl:3: /);
    const missing = submitRun(env, 'missing.jsonl', 3);
    assert.equal(missing.code, 2);
    assert.match(missing.err, /LM_ERR_DATA: .*missing\.jsonl: cannot be read/);
    assert.equal(uploads(), before, 'refused submissions stored nothing');
    const wrongToken = loramesh({ ...env, LORAMESH_POOL_TOKEN: 'lmt_nope' }, 'runs');
    assert.equal(wrongToken.code, 2);
    assert.match(wrongToken.err, /LM_ERR_AUTH/);

    // a long run, the pool SIGKILLed mid-run, started again: the run resumes and finishes
    const long = submitRun(env, 'task.jsonl', 300, '--checkpoint-every', '2');
    assert.equal(long.code, 0, long.err);
    assert.match(long.out, /already uploaded task\.jsonl/, 'the same file is not stored twice');
    const longId = /^(r_\S+)\s+queued/m.exec(long.out)![1];
    await until('the long run to pass step 4', 60_000, async () =>
      (await runs(url, token)).some((r) => r.id === longId && r.state === 'running' && r.step >= 4),
    );
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    ({ child, url } = await startPool());
    const env2 = { ...env, LORAMESH_POOL: url };
    const killedAt = (await runs(url, token)).find((r) => r.id === longId)!;
    assert.ok(killedAt.state === 'running' && killedAt.step < 300, `resumed mid-run (${JSON.stringify(killedAt)})`);
    await until('the resumed run to finish', 120_000, async () =>
      (await runs(url, token)).some((r) => r.id === longId && r.state === 'done' && r.step === 300),
    );
    assert.equal(loramesh(env2, 'runs').code, 0);
  } finally {
    child.kill('SIGINT');
    await new Promise((r) => (child.exitCode === null && child.signalCode === null ? child.once('exit', r) : r(null)));
  }
});
