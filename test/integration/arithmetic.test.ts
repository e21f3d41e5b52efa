// `train --arithmetic relaxed-fma` end to end on a tiny model: a run over the mesh (2 local worker
// processes) ends with the same adapter bytes as the same run in-process (both hold the base for the
// fma kernels and compute in the run's variant) and as in-process with 2 wasm threads, its run_config.json records the variant, and its
// adapter stays within 1e-4 relative L2 of the simd128 run's (fused or not, the same math).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodePeftAdapter } from '../../shared/formats/peft.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

const cli = fileURLToPath(new URL('../../coordinator/cli.ts', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'loramesh-arithmetic-'));
const modelDir = join(root, 'model');
before(() => writeTinyModelDir(modelDir, 5));
after(() => rmSync(root, { recursive: true, force: true }));

function train(runId: string, extra: string[], env: NodeJS.ProcessEnv = {}): Buffer {
  const args = ['--import', 'tsx', cli, 'train', '--model', modelDir, '--backend', 'wasm', '--rank', '4'];
  args.push('--targets', 'q_proj,v_proj', '--steps', '3', '--global-batch', '8', '--micro-batch', '4');
  args.push('--train-size', '48', '--eval-every', '1000', '--seed', '11', '--out', join(root, 'runs'));
  const run = spawnSync(process.execPath, [...args, '--run-id', runId, ...extra], {
    encoding: 'utf8',
    env: { ...process.env, LORAMESH_CACHE: join(root, 'cache'), ...env },
    timeout: 180_000,
  });
  assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`);
  return readFileSync(join(root, 'runs', runId, 'adapter_model.safetensors'));
}

const values = (bytes: Buffer) =>
  [...decodePeftAdapter(new Uint8Array(bytes)).values()].flatMap((m) => [...m.A, ...m.B]);

test('relaxed-fma: the mesh run equals the in-process run bit for bit, and stays near simd128', () => {
  const mesh = train('fma-mesh', ['--arithmetic', 'relaxed-fma', '--local-workers', '2']);
  const inProcess = train('fma-in-process', ['--arithmetic', 'relaxed-fma', '--in-process']);
  assert.ok(mesh.equals(inProcess), 'relaxed-fma mesh and in-process adapters differ');
  // the GEMM split over 2 threads (kernels/gemm-threads.ts: by output columns) leaves the bits alone
  const threaded = train('fma-2-threads', ['--arithmetic', 'relaxed-fma', '--in-process'], {
    LORAMESH_WASM_THREADS: '2',
  });
  assert.ok(threaded.equals(inProcess), 'relaxed-fma with 2 wasm threads differs from 1 thread');
  const config = JSON.parse(readFileSync(join(root, 'runs', 'fma-mesh', 'run_config.json'), 'utf8'));
  assert.equal(JSON.stringify(config).includes('"arithmetic":"relaxed-fma"'), true);

  const simdBytes = train('simd128', ['--in-process']);
  const simd = values(simdBytes);
  const fma = values(mesh);
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < simd.length; i++) {
    diff += (simd[i] - fma[i]) ** 2;
    norm += simd[i] ** 2;
  }
  assert.ok(norm > 0);
  assert.ok(Math.sqrt(diff / norm) < 1e-4, `relative L2 ${Math.sqrt(diff / norm)}`);
  console.log(
    `relaxed-fma vs simd128: relative L2 ${Math.sqrt(diff / norm).toExponential(2)}, bytes ${simdBytes.equals(mesh) ? 'equal' : 'differ'}`,
  );
});
