/**
 * Threads for the compact GEMM (compact-gemm.ts): helper threads that run lm_product on their share of
 * a product's output columns, in the tfjs module's shared memory (its threaded build), while the
 * calling thread runs the first share. A separately built module cannot post work to tfjs's own
 * Emscripten pthread pool, so the helpers are our own: worker_threads in Node, given by the platform
 * (node/backend.ts calls setGemmHelperSpawner); without a spawner, or with unshared memory, products
 * stay on the calling thread.
 *
 * Never more threads than the worker was given: in Node the threaded tfjs build runs XNNPACK on the
 * calling thread alone (node/wasm-threads.ts) and the threads go to these products, which are most of
 * a step's work, so XNNPACK's pool and these helpers never compete for the cores. An idle helper polls
 * for a millisecond (products come in quick succession), then blocks in Atomics.wait.
 *
 * Splitting by output columns leaves every output element's sum as it is: the bits do not depend on
 * the thread count.
 */

/** The platform's way to start a helper: runs `source` (which defines run(init)), then run(init). */
export type SpawnHelper = (source: string, init: HelperInit) => { terminate(): unknown };

export interface HelperInit {
  memory: WebAssembly.Memory;
  module: WebAssembly.Module;
  control: SharedArrayBuffer;
  index: number;
}

let spawnHelper: SpawnHelper | null = null;
let platformThreads: number | null = null;

/**
 * Lets products split over `threads` threads (the caller and threads − 1 helpers from `spawn`) from
 * now on; null: none (each product on the calling thread).
 */
export function setGemmHelperSpawner(spawn: SpawnHelper | null, threads = 1): void {
  spawnHelper = spawn;
  platformThreads = spawn ? threads : null;
}

/** The threads products split over, where the platform set them (else the backend's own count). */
export const gemmThreadCount = (): number | null => platformThreads;

/** lm_product's argument count; a helper's slot is its job's arguments. */
export const PRODUCT_ARGS = 15;
// control (Int32Array): [0] generation, [1] helpers done, [2] quit, [3] failures, then one slot per helper.
const HEADER = 4;
const [GENERATION, DONE, QUIT, FAILED] = [0, 1, 2, 3];

/**
 * How long an idle helper polls before it sleeps: a step's products come a fraction of a millisecond
 * apart, and waking a sleeping thread (a futex) took 0.05–2 ms on this machine's VM.
 */
const SPIN_MS = 1;

/**
 * The helper's code, plain JavaScript (no imports: it runs the same from tsx, from the bundled CLI
 * and in the offline bundle): instantiate the module on the shared memory, then run each generation's
 * job from its slot. A helper that cannot instantiate or run a job counts a failure and stays, so the
 * caller never waits for a thread that died: it computes the helpers' shares itself.
 */
const HELPER_SOURCE = `
function run({ memory, module, control, index }) {
  const c = new Int32Array(control);
  let lm_product = null;
  try {
    lm_product = new WebAssembly.Instance(module, { env: { memory } }).exports.lm_product;
  } catch {}
  const slot = ${HEADER} + index * ${PRODUCT_ARGS};
  let seen = 0; // generation 0 has no job; one posted before this thread started is run at once
  for (;;) {
    // Products come in quick succession: spin a moment before sleeping (a futex wake can take 100 µs).
    for (const until = performance.now() + ${SPIN_MS}; Atomics.load(c, ${GENERATION}) === seen && performance.now() < until; );
    Atomics.wait(c, ${GENERATION}, seen);
    seen = Atomics.load(c, ${GENERATION});
    if (Atomics.load(c, ${QUIT})) return;
    try {
      lm_product(...c.subarray(slot, slot + ${PRODUCT_ARGS}));
    } catch {
      Atomics.add(c, ${FAILED}, 1);
    }
    Atomics.add(c, ${DONE}, 1);
    Atomics.notify(c, ${DONE});
  }
}
`;

let splitProducts = 0;
/** Products split over helper threads so far in this process (tests and benches read it). */
export const gemmSplitProducts = () => splitProducts;

/** How long the caller waits for its helpers before calling the product failed. */
const HELPER_TIMEOUT_MS = 60_000;

export interface GemmThreads {
  /** threads a product is split over: the caller plus its helpers (1 once a helper has failed) */
  readonly count: number;
  /**
   * Runs jobs[0] here (`exec`) and jobs[1..] on the helpers; returns when all are done. If a helper
   * failed, the helpers' jobs run here too (a job writes its own output columns from scratch, so the
   * bits are the same) and later products stay on this thread.
   */
  run(jobs: number[][], exec: (job: number[]) => void): void;
}

/**
 * threads − 1 helpers running `module` on `memory`, or null where there can be none (one thread, no
 * spawner, or memory that is not shared).
 */
export function startGemmThreads(
  memory: WebAssembly.Memory,
  module: WebAssembly.Module,
  threads: number,
): GemmThreads | null {
  const spawn = spawnHelper;
  if (threads < 2 || !spawn || !(memory.buffer instanceof SharedArrayBuffer)) return null;
  const helpers = threads - 1;
  const control = new SharedArrayBuffer(4 * (HEADER + helpers * PRODUCT_ARGS));
  const c = new Int32Array(control);
  for (let index = 0; index < helpers; index++) spawn(HELPER_SOURCE, { memory, module, control, index });
  let failed = false;
  return {
    get count() {
      return failed ? 1 : threads;
    },
    run(jobs, exec) {
      const busy = jobs.length - 1;
      if (busy > helpers) throw new Error(`${busy} helper jobs for ${helpers} helpers`);
      for (let h = 0; h < helpers; h++) {
        // A helper without a job runs an empty column range (lm_product returns at once).
        const job = jobs[h + 1] ?? new Array<number>(PRODUCT_ARGS).fill(0);
        c.set(job, HEADER + h * PRODUCT_ARGS);
      }
      splitProducts++;
      Atomics.store(c, DONE, 0);
      Atomics.add(c, GENERATION, 1);
      Atomics.notify(c, GENERATION);
      exec(jobs[0]);
      for (const until = performance.now() + SPIN_MS; Atomics.load(c, DONE) < helpers && performance.now() < until; );
      const deadline = performance.now() + HELPER_TIMEOUT_MS;
      for (let done = Atomics.load(c, DONE); done < helpers; done = Atomics.load(c, DONE)) {
        if (performance.now() > deadline)
          throw new Error(`compact GEMM: ${helpers - done} helper threads did not finish`);
        Atomics.wait(c, DONE, done, 100);
      }
      if (Atomics.load(c, FAILED) > 0) {
        failed = true;
        for (const job of jobs.slice(1)) exec(job);
      }
    },
  };
}
