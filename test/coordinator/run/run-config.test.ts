// The run config: defaults filled from one place, every field checked with an error naming it, and
// the CLI's flag table pointing only at fields that exist.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_LORA, DEFAULT_TRAIN } from '../../../shared/config.ts';
import { CONFIG_FLAGS, configFromFlags } from '../../../coordinator/cli/config-flags.ts';
import { DEFAULT_RUN_CONFIG, resolveRunConfig, type RunConfigInput } from '../../../coordinator/run/run-config.ts';

const base = (extra: Partial<RunConfigInput> = {}): RunConfigInput => ({
  run: { lora: DEFAULT_LORA, train: DEFAULT_TRAIN },
  ...extra,
});

const refused = (input: RunConfigInput, pattern: RegExp) =>
  assert.throws(
    () => resolveRunConfig(input, '/models/m'),
    (err: Error) => /^LM_ERR_CONFIG: /.test(err.message) && pattern.test(err.message),
  );

test('fields left out take DEFAULT_RUN_CONFIG; given ones win; the model comes from the caller', () => {
  const c = resolveRunConfig(base({ deployment: { port: 8080 }, limits: { defence: { probation: 0 } } }), '/m');
  assert.equal(c.run.model, '/m');
  assert.equal(c.run.aggregation, 'sum');
  assert.deepEqual(c.run.wire, DEFAULT_RUN_CONFIG.run.wire);
  assert.equal(c.deployment.port, 8080);
  assert.equal(c.deployment.host, DEFAULT_RUN_CONFIG.deployment.host);
  assert.equal(c.deployment.heartbeatMs, 5000);
  assert.equal(c.limits.defence.probation, 0);
  assert.equal(c.limits.defence.spotCheck, DEFAULT_RUN_CONFIG.limits.defence.spotCheck);
  assert.equal(c.limits.net.maxConnections, DEFAULT_RUN_CONFIG.limits.net.maxConnections);
  // a resolved config is a valid input and resolves to itself
  assert.deepEqual(resolveRunConfig(c), c);
});

test('each bad field is refused with a one-line error naming it, the value and what was expected', () => {
  refused(base({ deployment: { port: 70000 } }), /deployment\.port should be an integer in \[0, 65535\], got 70000/);
  refused(base({ deployment: { host: '1.2.3' } }), /deployment\.host should be an IP address or a host name/);
  refused(base({ deployment: { runId: '../escape' } }), /deployment\.runId should be a folder name/);
  refused(base({ deployment: { runId: '..' } }), /deployment\.runId/);
  refused(base({ deployment: { localWorkers: -1 } }), /deployment\.localWorkers should be an integer ≥ 0/);
  refused(base({ deployment: { dashboardAccess: 'admin' } }), /needs an admin token/);
  refused(
    base({ limits: { defence: { outlierFactor: 0.5 } } }),
    /limits\.defence\.outlierFactor .*0 \(off\) or a number ≥ 1/,
  );
  refused(base({ limits: { defence: { spotCheck: 2 } } }), /limits\.defence\.spotCheck should be a number in \[0, 1\]/);
  refused(base({ limits: { net: { trustedProxies: ['not-an-ip'] } } }), /limits\.net\.trustedProxies/);
  refused(base({ run: { lora: { ...DEFAULT_LORA, r: 0 }, train: DEFAULT_TRAIN } }), /run\.lora: /);
  refused(
    base({
      run: { lora: DEFAULT_LORA, train: DEFAULT_TRAIN, local: { steps: 0, innerLr: 1, outerLr: 1, outerMomentum: 0 } },
    }),
    /run\.local\.steps should be an integer ≥ 1, got 0/,
  );
  refused(
    base({ run: { lora: DEFAULT_LORA, train: DEFAULT_TRAIN, aggregation: 'mean' as never } }),
    /run\.aggregation should be one of/,
  );
  const withBase = (baseFormat: unknown) =>
    base({ run: { lora: DEFAULT_LORA, train: DEFAULT_TRAIN, baseFormat: baseFormat as never } });
  refused(
    withBase({ format: 'int4' }),
    /run\.baseFormat\.format should be one of f32, f16, bf16, int8, nf4, got "int4"/,
  );
  refused(withBase({ format: 'f16', blockSize: 64 }), /run\.baseFormat\.blockSize applies only to int8 and nf4/);
  refused(withBase('nf4'), /run\.baseFormat should be an object like/);
});

test('the arithmetic variant: absent is simd128 (the bits of every earlier run); relaxed-fma is kept; others refused', () => {
  assert.equal(resolveRunConfig(base(), '/m').run.arithmetic, 'simd128');
  assert.equal(DEFAULT_RUN_CONFIG.run.arithmetic, 'simd128');
  const run = (arithmetic: unknown) => ({ lora: DEFAULT_LORA, train: DEFAULT_TRAIN, arithmetic: arithmetic as never });
  assert.equal(resolveRunConfig(base({ run: run('relaxed-fma') }), '/m').run.arithmetic, 'relaxed-fma');
  assert.equal(resolveRunConfig(base({ run: run('simd128') }), '/m').run.arithmetic, 'simd128');
  for (const [bad, shown] of [
    ['fma', '"fma"'],
    ['SIMD128', '"SIMD128"'],
    ['', '""'],
    [3, '3'],
  ] as const)
    refused(
      base({ run: run(bad) }),
      new RegExp(`run\\.arithmetic should be one of simd128, relaxed-fma, got ${shown}$`),
    );
});

test('the base format: absent is float32 (null); a given one is resolved with its defaults', () => {
  assert.equal(resolveRunConfig(base(), '/m').run.baseFormat, null);
  const run = { lora: DEFAULT_LORA, train: DEFAULT_TRAIN, baseFormat: { format: 'nf4', doubleQuant: true } as never };
  assert.deepEqual(resolveRunConfig(base({ run }), '/m').run.baseFormat, {
    format: 'nf4',
    blockSize: 64,
    doubleQuant: true,
    doubleQuantBlockSize: 256,
  });
});

test("every CLI flag in CONFIG_FLAGS lands on a field the config has, with the flag's value", () => {
  const defaults = DEFAULT_RUN_CONFIG as unknown as Record<string, Record<string, Record<string, unknown>>>;
  for (const [key, path] of Object.entries(CONFIG_FLAGS)) {
    const [part, group, field] = path.split('.');
    const exists = part === 'deployment' ? group in defaults.deployment : field in defaults.limits[group];
    assert.ok(exists, `${key} → ${path}: no such field`);
  }
  const shape = { model: '/m', data: null as never, lora: DEFAULT_LORA, train: DEFAULT_TRAIN };
  const flags = {
    host: '0.0.0.0',
    port: 9000,
    trustedProxy: ['10.0.0.1'],
    spotCheck: 0.5,
    inProcess: true,
    localWorkers: 3,
  };
  const c = resolveRunConfig(configFromFlags(flags, shape, { token: 't' }));
  assert.equal(c.deployment.host, '0.0.0.0');
  assert.equal(c.deployment.port, 9000);
  assert.equal(c.deployment.token, 't');
  assert.equal(c.deployment.localWorkers, 0, '--in-process starts no local workers');
  assert.deepEqual(c.limits.net.trustedProxies, ['10.0.0.1']);
  assert.equal(c.limits.defence.spotCheck, 0.5);
  assert.equal(c.run.checkpointEvery, 25, "train's own checkpoint interval when the run has none");
});

test('ingestion threads need a reduction block and workers; a relay token is its own and long enough', () => {
  refused(
    base({ deployment: { ingestThreads: 2 } }),
    /deployment\.ingestThreads should be 0 without a reduction block.*--reduction-block K.*got 2/,
  );
  refused(
    base({
      run: { lora: DEFAULT_LORA, train: { ...DEFAULT_TRAIN, reductionBlock: 2 } },
      deployment: { ingestThreads: 2, inProcess: true },
    }),
    /deployment\.ingestThreads should be 0 with --in-process.*got 2/,
  );
  refused(base({ deployment: { ingestThreads: 65 } }), /deployment\.ingestThreads should be at most 64, got 65/);
  const ok = resolveRunConfig(
    base({
      run: { lora: DEFAULT_LORA, train: { ...DEFAULT_TRAIN, reductionBlock: 4 } },
      deployment: { ingestThreads: 2 },
    }),
    '/m',
  );
  assert.equal(ok.deployment.ingestThreads, 2);
  assert.equal(resolveRunConfig(base(), '/m').deployment.ingestThreads, 0);
  refused(base({ deployment: { relayToken: 'short' } }), /deployment\.relayToken/);
  refused(
    base({ deployment: { token: 'same-secret-1', relayToken: 'same-secret-1' } }),
    /deployment\.relayToken.*its own/,
  );
});
