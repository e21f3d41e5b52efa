// RunDir.open: a new run refuses a folder that already holds a run, a resume needs run_config.json,
// both hold run.lock until close(), and a refused open leaves no lock behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RunDir } from '../../../coordinator/io/run-dir.ts';
import { LOCK_FILE } from '../../../coordinator/io/run-lock.ts';
import { ErrorCodes } from '../../../shared/errors.ts';
import { throwsCode } from '../../helpers/assert.ts';

const root = mkdtempSync(join(tmpdir(), 'loramesh-run-dir-'));
test.after(() => rmSync(root, { recursive: true, force: true }));

test('mode new: creates and locks the folder; a second open is LM_ERR_LOCKED; close releases', () => {
  const runDir = RunDir.open(root, 'fresh', { mode: 'new' });
  assert.ok(existsSync(join(root, 'fresh', LOCK_FILE)));
  throwsCode(
    () => RunDir.open(root, 'fresh', { mode: 'new' }),
    ErrorCodes.LOCKED,
    new RegExp(`in use by pid ${process.pid}`),
  );
  runDir.writeConfig({ runId: 'fresh' });
  throwsCode(
    () => RunDir.open(root, 'fresh', { mode: 'resume' }),
    ErrorCodes.LOCKED,
    new RegExp(`in use by pid ${process.pid}`),
  );
  runDir.close();
  assert.ok(!existsSync(join(root, 'fresh', LOCK_FILE)));
  runDir.close(); // idempotent
});

test('mode new refuses a folder holding run_config.json or metrics.jsonl, naming it and both ways out', () => {
  for (const file of ['run_config.json', 'metrics.jsonl']) {
    const runId = `old-${file}`;
    mkdirSync(join(root, runId));
    writeFileSync(join(root, runId, file), '{}\n');
    const shown = join(root, runId);
    throwsCode(
      () => RunDir.open(root, runId, { mode: 'new' }),
      ErrorCodes.CONFIG,
      new RegExp(
        `run folder ${shown} already exists \\(it has ${file}\\); ` +
          `pick another --run-id or continue it with --resume ${shown}`,
      ),
    );
    assert.ok(!existsSync(join(root, runId, LOCK_FILE)));
  }
});

test('mode resume needs run_config.json and locks the folder', () => {
  throwsCode(
    () => RunDir.open(root, 'missing', { mode: 'resume' }),
    ErrorCodes.CONFIG,
    /--resume .*missing: there is no run_config\.json/,
  );
  assert.ok(!existsSync(join(root, 'missing')), 'a refused resume creates nothing');
  mkdirSync(join(root, 'stopped'));
  writeFileSync(join(root, 'stopped', 'run_config.json'), '{}\n');
  const runDir = RunDir.open(root, 'stopped', { mode: 'resume' });
  assert.ok(existsSync(join(root, 'stopped', LOCK_FILE)));
  runDir.close();
  assert.ok(!existsSync(join(root, 'stopped', LOCK_FILE)));
});
