/**
 * `npm run bench:root-step [-- --shape NAME] [--no-write]`: the coordinator's serial work per step at a real
 * model's exact shapes (scripts/make-checkpoint.ts SHAPES; default qwen2.5-0.5b), LoRA r=16 on every linear
 * projection (PEFT's "all-linear"): whatever the number of workers, the root checks the summed gradient, clips
 * it, steps AdamW, checks the new parameters and encodes one parameter frame. Each is measured with the WebAssembly
 * kernels (shared/train/reduce-kernel.ts; ParamsPublisher's in-place flat copy and encodeMessage's one-copy frame)
 * and without them (the scalar loops; a fresh flat vector and msgpackr's whole pack), alternating in the same
 * repeats: the same bits either way (the tests compare them).
 * Figures: CPU-ms of this process per operation, median of the repeats. Writes bench/results/root-step-NAME.json
 * and its section of bench/RESULTS.md.
 */
import { pathToFileURL } from 'node:url';
import { SHAPE_NAMES, shapeConfig, type ShapeName } from '../scripts/make-checkpoint.ts';
import { checkModelConfig } from '../shared/config.ts';
import { adapterSpec } from '../shared/lora/adapter.ts';
import { ParamsPublisher } from '../coordinator/engine/params-publisher.ts';
import { encodeMessageWhole } from '../shared/protocol/codec.ts';
import { firstNonFinite, flattenTensors } from '../shared/protocol/messages.ts';
import { encodeFloats, F32 } from '../shared/protocol/wire-codec.ts';
import { adamwStep, globalNorm, initAdam } from '../shared/train/optimizer.ts';
import { useReduceKernel } from '../shared/train/reduce-kernel.ts';
import { fmt, machine, provenance, replaceSection, stats, writeJson, type Stats } from './lib/results.ts';
import { ALL_LINEAR_R16 } from './lib/sim-mesh.ts';

const HYPER = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };

interface Operation {
  name: string;
  kernel: Stats;
  scalar: Stats;
}

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

export function runRootStepBench(shape: ShapeName, repeats = 7): { parameters: number; operations: Operation[] } {
  const spec = adapterSpec(checkModelConfig(shapeConfig(shape)), ALL_LINEAR_R16);
  const make = (f: (i: number) => number) =>
    new Map(
      spec.map((t, k) => {
        const a = new Float32Array(t.shape[0] * t.shape[1]);
        for (let i = 0; i < a.length; i++) a[i] = f(i + k);
        return [t.name, a];
      }),
    );
  const grads = make((i) => Math.cos(i) * 1e-3);
  const params = make((i) => Math.sin(i) * 1e-2);
  const state = initAdam(params);
  const parameters = [...params.values()].reduce((n, a) => n + a.length, 0);
  // the root's path (ParamsPublisher: the flat copy written in place, the frame built once) against the one before
  // (a fresh flat vector, msgpackr's whole pack)
  const publisher = new ParamsPublisher({
    runId: 'root-step',
    model: { config: checkModelConfig(shapeConfig(shape)), files: [] },
    lora: ALL_LINEAR_R16,
    adapter: spec,
    wire: { up: F32, down: F32 },
  });
  let version = 0;
  const publish = () => publisher.publish(version++, params);
  const before = () =>
    encodeMessageWhole({ type: 'params', paramVersion: 1, tensors: encodeFloats(flattenTensors(params, spec), F32) });
  // [name, with the kernels, without (null: the same call with the kernels off)]
  const ops: [string, () => unknown, () => unknown][] = [
    ['finiteness check of the summed gradient', () => [...grads.values()].map(firstNonFinite), null!],
    ['global norm (clipping)', () => globalNorm(grads), null!],
    ['AdamW step', () => adamwStep(params, grads, state, 1e-4, HYPER), null!],
    ['finiteness check of the new parameters', () => [...params.values()].map(firstNonFinite), null!],
    ['flatten + encode the parameter frame', publish, before],
  ];
  const samples = ops.map(() => ({ kernel: [] as number[], scalar: [] as number[] }));
  for (let r = 0; r < repeats; r++) {
    ops.forEach(([, withKernel, without], k) => {
      for (const kernelOn of r % 2 === 0 ? [true, false] : [false, true]) {
        const was = useReduceKernel(kernelOn);
        try {
          const t0 = cpuMs();
          (kernelOn || !without ? withKernel : without)();
          (kernelOn ? samples[k].kernel : samples[k].scalar).push(cpuMs() - t0);
        } finally {
          useReduceKernel(was);
        }
      }
    });
  }
  return {
    parameters,
    operations: ops.map(([name], k) => ({ name, kernel: stats(samples[k].kernel), scalar: stats(samples[k].scalar) })),
  };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const argv = process.argv.slice(2);
  const at = argv.indexOf('--shape');
  const shape = (at >= 0 ? argv[at + 1] : 'qwen2.5-0.5b') as ShapeName;
  if (!SHAPE_NAMES.includes(shape)) throw new Error(`--shape ${shape}: expected one of ${SHAPE_NAMES.join(', ')}`);
  const write = !argv.includes('--no-write');
  const date = new Date().toISOString();
  const { parameters, operations } = runRootStepBench(shape);
  const total = (k: 'kernel' | 'scalar') => operations.reduce((s, o) => s + o[k].median, 0);
  const rows = operations.map(
    (o) =>
      `| ${o.name} | ${fmt(o.kernel.median)} (${fmt(o.kernel.min)}–${fmt(o.kernel.max)}) | ` +
      `${fmt(o.scalar.median)} (${fmt(o.scalar.min)}–${fmt(o.scalar.max)}) | ${fmt(o.scalar.median / o.kernel.median)}× |`,
  );
  const table = [
    '| per step | with the kernels, CPU-ms | scalar loops / msgpackr, CPU-ms | gain |',
    '|---|---:|---:|---:|',
    ...rows,
    `| **total** | **${fmt(total('kernel'))}** | **${fmt(total('scalar'))}** | **${fmt(total('scalar') / total('kernel'))}×** |`,
  ];
  console.log(`root step work at ${shape} shapes, LoRA r=16 all-linear: ${parameters} parameters`);
  for (const line of table) console.log(line);
  if (write) {
    // glibc's malloc settings change the cost of tens-of-MB frames (README, Adapters of tens of MB): its own section
    const tuned = process.env.GLIBC_TUNABLES;
    const name = `root-step-${shape}${tuned ? '-tuned' : ''}`;
    const command = `${tuned ? `GLIBC_TUNABLES=${tuned} ` : ''}npm run bench:root-step${at >= 0 ? ` -- --shape ${shape}` : ''}`;
    writeJson(name, { date, machine: machine(), shape, tuned: tuned ?? null, parameters, operations });
    replaceSection(
      name,
      `Root step work at ${shape} shapes (\`${command}\`)`,
      [
        provenance(date, command),
        '',
        `What the root does once per step, whatever the number of workers, at ${shape}'s exact shapes with LoRA r=16 ` +
          `on every linear projection (${parameters} parameters, ${fmt((4 * parameters) / 2 ** 20)} MiB per ` +
          'frame): with the WebAssembly kernels (shared/train/reduce-kernel.ts) and the one-copy frame ' +
          '(ParamsPublisher: the flat copy written in place, codec.ts encodeMessage), and without them, ' +
          'alternating in 7 repeats; CPU-ms of the process, median ' +
          '(min–max). The bits are the same either way (the global norm keeps its one float64 sum in order: ' +
          "the kernel only drops V8's per-element overhead).",
        '',
        ...table,
      ].join('\n'),
    );
  }
}
