/**
 * Fault injection for the Node worker, from LORAMESH_FAULT (used by the fault-tolerance tests and
 * benchmarks; off unless set). Comma-separated rules:
 *   delay:MS                  sleep MS before sending every result (a slow worker)
 *   kill-before-result:STEP   SIGKILL this process after computing its first micro-batch of STEP, before answering
 *   kill-after-send:STEP      SIGKILL right after handing a result of STEP to the socket (mid-send)
 *   kill-after-params:VERSION SIGKILL right after receiving parameter version VERSION
 *   byzantine:SCALE           send every gradient multiplied by −SCALE (a lying volunteer)
 *   huge:VALUE                answer every assignment at once, computing nothing, with every gradient
 *                             value = VALUE (finite, e.g. 1e30 or 3e38: values whose sum overflows float32)
 *   stall:STEP                from the assignment of step STEP on (the step its coordinator or relay numbers),
 *                             compute and never answer, while the connection and its heartbeats stay alive
 *                             (a hung volunteer)
 */
import { ErrorCodes, fail } from '../shared/errors.ts';
import type { WorkerHooks } from '../shared/worker-loop.ts';
import { decodeFloats, encodeFloats } from '../shared/protocol/wire-codec.ts';
import { tokenCount } from '../shared/train/micro-batch.ts';

const die = (why: string) => {
  console.error(`[fault] ${why}: SIGKILL`);
  process.kill(process.pid, 'SIGKILL');
};

export function faultHooks(spec: string | undefined): WorkerHooks | undefined {
  if (!spec) return undefined;
  const hooks: WorkerHooks = {};
  for (const rule of spec.split(',')) {
    const [kind, value] = rule.split(':');
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0)
      fail(ErrorCodes.CONFIG, `LORAMESH_FAULT rule ${JSON.stringify(rule)} needs a non-negative integer after ':'`);
    switch (kind) {
      case 'delay':
        hooks.beforeResult = () => new Promise((r) => setTimeout(r, n));
        break;
      case 'kill-before-result':
        hooks.beforeResult = (a) => {
          if (a.step === n) die(`before answering step ${n}`);
        };
        break;
      case 'kill-after-send':
        hooks.afterResult = (a) => {
          if (a.step === n) die(`right after sending a result of step ${n}`);
        };
        break;
      case 'byzantine':
        hooks.beforeResult = (_a, r) => {
          if (r.type !== 'result') return r;
          const grads = encodeFloats(
            decodeFloats(r.grads).map((x) => -n * x),
            { name: r.grads.codec, blockSize: r.grads.blockSize },
          );
          return { ...r, grads };
        };
        break;
      case 'kill-after-params':
        hooks.afterParams = (v) => {
          if (v === n) die(`right after parameter version ${n}`);
        };
        break;
      case 'stall':
        hooks.beforeResult = (a, r) => {
          if (a.step < n) return r;
          console.error(`[fault] holding the result of step ${a.step} forever`);
          return new Promise<never>(() => {});
        };
        break;
      case 'huge':
        hooks.compute = async (a, adapter) => {
          const tokens = (a.type === 'assign' ? [a.microBatch] : a.microBatches).reduce(
            (t, mb) => t + tokenCount(mb),
            0,
          );
          return {
            lossSum: tokens,
            tokenCount: tokens,
            grads: new Map([...adapter].map(([name, p]) => [name, new Float32Array(p.length).fill(n)])),
          };
        };
        break;
      default:
        fail(
          ErrorCodes.CONFIG,
          `LORAMESH_FAULT rule ${JSON.stringify(kind)} is not one of ` +
            'delay, kill-before-result, kill-after-send, kill-after-params, byzantine, huge, stall',
        );
    }
  }
  return hooks;
}
