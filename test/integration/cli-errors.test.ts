// Every user-facing error of `train` is one line with its code and exit code 2, found before the
// model loads where possible (no 39 KB tfjs-wasm dump): bad port and host values, a missing token
// file or TLS file, a taken port. Checkpoints hold no ledger (it stays in ledger.jsonl).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensorsHeader } from '../../shared/formats/safetensors.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

const cli = fileURLToPath(new URL('../../coordinator/cli.ts', import.meta.url));
let root = '';
before(() => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-cli-errors-'));
  writeTinyModelDir(join(root, 'model'), 4);
});
after(() => rmSync(root, { recursive: true, force: true }));

function train(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', cli, 'train', '--model', join(root, 'model'), '--out', join(root, 'runs'), ...args],
      { env: { ...process.env, LORAMESH_CACHE: join(root, 'cache') } },
    );
    let [stdout, stderr] = ['', ''];
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

function assertOneLine(r: { code: number | null; stdout: string; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 2, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stdout, /tfjs|Usage:/, 'no model load, no help');
}

test(
  'bad values: --port 99999, --host 256.1.1.1, ' + 'a missing --token-file and --tls-cert are one coded line each',
  async () => {
    assertOneLine(
      await train(['--port', '99999']),
      /^loramesh: LM_ERR_CONFIG: option '--port <n>' argument '99999' is invalid/,
    );
    assertOneLine(
      await train(['--host', '256.1.1.1']),
      /^loramesh: LM_ERR_CONFIG: option '--host <addr>' argument '256\.1\.1\.1' is invalid/,
    );
    assertOneLine(
      await train(['--token-file', join(root, 'nope')]),
      /^loramesh: LM_ERR_CONFIG: --token-file .*nope: cannot read it \(ENOENT\)$/,
    );
    assertOneLine(
      await train(['--tls-cert', join(root, 'c.pem'), '--tls-key', join(root, 'k.pem')]),
      /^loramesh: LM_ERR_CONFIG: --tls-cert .*c\.pem: cannot read it/,
    );
  },
);

test('a taken port is found before the model loads', async () => {
  const holder = createServer().listen(0, '127.0.0.1');
  await new Promise((r) => holder.once('listening', r));
  const { port } = holder.address() as { port: number };
  try {
    assertOneLine(
      await train(['--port', String(port)]),
      new RegExp(`^loramesh: LM_ERR_CONFIG: --port ${port} is already in use on 127\\.0\\.0\\.1`),
    );
  } finally {
    holder.close();
  }
});

test('a checkpoint holds the state and config, not the ledger', async () => {
  const r = await train([
    '--backend',
    'wasm',
    '--local-workers',
    '1',
    '--steps',
    '2',
    '--global-batch',
    '4',
    '--micro-batch',
    '2',
    '--train-size',
    '16',
    '--run-id',
    'small',
    '--eval-every',
    '1000',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const dir = join(root, 'runs', 'small', 'checkpoints');
  const [file] = readdirSync(dir);
  const header = readSafetensorsHeader(new Uint8Array(readFileSync(join(dir, file))));
  assert.equal(header.metadata.step, '2');
  assert.ok(header.metadata.config, 'config stored');
  assert.equal(header.metadata.ledger, undefined, 'no ledger in the checkpoint');
  assert.equal(
    readFileSync(join(root, 'runs', 'small', 'ledger.jsonl'), 'utf8')
      .trim()
      .split('\n').length,
    2,
  );
});

test('--base-format: a bad value or an option that does not apply is one coded line naming the flag', async () => {
  assertOneLine(
    await train(['--base-format', 'int4']),
    /^loramesh: LM_ERR_CONFIG: option '--base-format <format>' argument 'int4' is invalid\. expected one of f32, f16/,
  );
  assertOneLine(
    await train(['--base-format', 'f16', '--base-block', '32']),
    /^loramesh: LM_ERR_CONFIG: --base-block applies only to int8 and nf4, got 32 for f16$/,
  );
});

test('--base-format nf4 --base-double-quant: quantized once (one log line), recorded in run_config.json', async () => {
  const r = await train([
    ...['--in-process', '--backend', 'wasm', '--steps', '1', '--global-batch', '2', '--micro-batch', '2'],
    ...['--train-size', '8', '--run-id', 'nf4', '--base-format', 'nf4', '--base-block', '8', '--base-double-quant'],
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^base: nf4\/8\+dq256, [\d.]+ MB \(float32 [\d.]+ MB\), cache miss, quantized in/m);
  const stored = JSON.parse(readFileSync(join(root, 'runs', 'nf4', 'run_config.json'), 'utf8'));
  assert.deepEqual(stored.baseFormat, { format: 'nf4', blockSize: 8, doubleQuant: true, doubleQuantBlockSize: 256 });
});
