// The offline worker bundle (scripts/bundle.mjs), unpacked in a temp folder and started from an
// empty one with stub `node`/`npm`/`npx`/`tsx` first on PATH: its loramesh-worker joins a run of a
// coordinator started from the source, and the run's adapter is byte-identical to the same run whose
// worker is the checkout's own (`--local-workers 1`). The stubs record any call: there must be none.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type BuiltBundle, buildBundleDir } from '../helpers/bundle.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

const cli = fileURLToPath(new URL('../../coordinator/cli.ts', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'loramesh-bundle-run-'));
const modelDir = join(root, 'model');
const children = new Set<ChildProcess>();
let bundle: BuiltBundle;

before(() => {
  writeTinyModelDir(modelDir, 3);
  bundle = buildBundleDir();
});
after(() => {
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
  rmSync(join(bundle.dir, '..', '..'), { recursive: true, force: true });
});

interface Proc {
  child: ChildProcess;
  out: { text: string };
  done: Promise<number | null>;
}

function start(command: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Proc {
  const child = spawn(command, args, {
    env: opts.env ?? process.env,
    cwd: opts.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  const out = { text: '' };
  child.stdout!.on('data', (b: Buffer) => (out.text += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (out.text += b.toString()));
  const done = new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 180_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
  return { child, out, done };
}

async function waitFor(proc: Proc, re: RegExp): Promise<RegExpExecArray> {
  for (let i = 0; i < 6000; i++) {
    const m = re.exec(proc.out.text);
    if (m) return m;
    if (proc.child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`never printed ${re}:\n${proc.out.text}`);
}

const TOKEN = 'bundle-test-token';
const trainArgs = (runId: string, workers: number) => [
  '--import',
  'tsx',
  cli,
  'train',
  '--model',
  modelDir,
  '--backend',
  'wasm',
  '--rank',
  '4',
  '--targets',
  'q_proj,v_proj',
  '--steps',
  '3',
  '--global-batch',
  '8',
  '--micro-batch',
  '4',
  '--train-size',
  '48',
  '--eval-every',
  '1000',
  '--seed',
  '7',
  '--token',
  TOKEN,
  '--local-workers',
  String(workers),
  '--out',
  join(root, 'runs'),
  '--run-id',
  runId,
];
const env = () => ({ ...process.env, LORAMESH_CACHE: join(root, 'cache') });

test('the bundled worker joins a run from an empty folder without node or npm on PATH, and its adapter equals a checkout worker’s bit for bit', async () => {
  const withBundle = start(process.execPath, trainArgs('bundled', 0), { env: env() });
  const [, url] = await waitFor(withBundle, /listening on (ws:\/\/\S+)/);
  const worker = start(
    join(bundle.dir, 'loramesh-worker'),
    [url, '--token', TOKEN, '--name', 'offline', '--backend', 'wasm'],
    {
      env: bundle.env,
      cwd: bundle.cwd,
    },
  );
  assert.equal(await withBundle.done, 0, withBundle.out.text);
  assert.equal(await worker.done, 0, worker.out.text);
  assert.match(worker.out.text, /sha256 verified/);
  assert.match(worker.out.text, /finished after 6 micro-batches/);
  assert.equal(
    existsSync(bundle.stubCalls),
    false,
    `something called node/npm from PATH: ${existsSync(bundle.stubCalls) ? readFileSync(bundle.stubCalls, 'utf8') : ''}`,
  );

  const withCheckout = start(process.execPath, trainArgs('checkout', 1), { env: env() });
  assert.equal(await withCheckout.done, 0, withCheckout.out.text);
  const adapter = (run: string) => readFileSync(join(root, 'runs', run, 'adapter_model.safetensors'));
  assert.ok(adapter('bundled').length > 1000);
  assert.ok(adapter('bundled').equals(adapter('checkout')), 'adapters differ');
  // the same micro-batches were computed by one worker each time
  const ledger = (run: string) =>
    readFileSync(join(root, 'runs', run, 'ledger.jsonl'), 'utf8')
      .trim()
      .split('\n').length;
  assert.equal(ledger('bundled'), 3);
  assert.equal(ledger('checkout'), 3);
});

test('the bundle says what it needs: README, BUNDLE.json with each file’s sha256, and the glibc the Node binary asks for', () => {
  const info = JSON.parse(readFileSync(join(bundle.dir, 'BUNDLE.json'), 'utf8'));
  assert.match(info.requires.node.glibc, /^2\.\d+$/);
  assert.match(info.requires.dawn.glibcxx, /^3\.4\.\d+$/);
  const paths = info.files.map((f: { path: string }) => f.path);
  for (const p of [
    'node/bin/node',
    'app/cli.mjs',
    'app/bench-gpu.mjs',
    `node_modules/webgpu/dist/${process.platform}-${process.arch}/dawn.node`,
  ])
    assert.ok(paths.includes(p), `${p} missing from the bundle`);
  // only this platform's Dawn, and no TypeScript or tsx
  assert.equal(paths.filter((p: string) => p.endsWith('dawn.node')).length, 1);
  assert.equal(paths.filter((p: string) => p.endsWith('.ts') || p.includes('tsx')).length, 0);
  assert.match(readFileSync(join(bundle.dir, 'README.txt'), 'utf8'), /loramesh-worker ws:\/\/HOST:PORT\/ws --token/);
});
