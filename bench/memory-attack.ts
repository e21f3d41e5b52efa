/**
 * `npm run bench:memory-attack`: the coordinator's memory under the attack an independent test found
 * on a live run: 300 /api/events clients that never read, plus a flood of rejected WebSocket frames
 * (each rejection is a log line, and every log line an event pushed to every stream). The coordinator
 * (server, mesh and monitor of the demo model's run, no training) runs in a child process; its VmRSS
 * is read from /proc every second. Scenarios: the default limits (most streams refused), the stream
 * caps raised so all 300 are admitted (what the per-stream bound holds), the same with attackers that
 * re-open every few seconds, and the per-stream bound lifted (the behaviour before it existed).
 * Prints baseline, peak, end and peak − baseline against the target, and the kernel memory of the
 * coordinator's sockets (send queues: not in its RSS, but bounded only per socket by tcp_wmem);
 * writes bench/results/memory-attack.json. About 2.5 minutes.
 * Flags: --seconds N (attack length per scenario, default 30); --only name,name runs some scenarios
 * and writes memory-attack.partial.json instead.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import type { NetLimits } from '../coordinator/net/net-limits.ts';
import { machine, provenance, replaceSection, writeJson } from './lib/results.ts';

const TOKEN = 'memory-attack-token';
const EVENT_CLIENTS = 300;
const FLOOD_CLIENTS = 32;
const TARGET_MB = 256;
/** the unbounded scenario stops here rather than exhaust the machine */
const SAFETY_STOP_MB = 2500;
const MB = 1024 * 1024;

interface Scenario {
  name: string;
  what: string;
  limits: Partial<NetLimits>;
  /** attackers close and re-open each admitted stream this often (undefined: hold it for good) */
  reopenMs?: number;
}

const RAISED: Partial<NetLimits> = {
  maxEventStreams: EVENT_CLIENTS,
  maxEventStreamsPerAddress: EVENT_CLIENTS,
  maxConnectionsPerAddress: 1024,
};
const SCENARIOS: Scenario[] = [
  { name: 'defaults', what: 'default limits (DEFAULT_NET_LIMITS)', limits: {} },
  { name: 'all-admitted', what: `stream caps raised to ${EVENT_CLIENTS}: the per-stream bound holds`, limits: RAISED },
  { name: 'all-admitted-reopening', what: 'as all-admitted, re-opened every 5 s', limits: RAISED, reopenMs: 5000 },
  {
    name: 'unbounded',
    what: 'as all-admitted without the per-stream bound (1 TiB): the behaviour before it',
    limits: { ...RAISED, maxEventStreamBufferBytes: 2 ** 40 },
  },
];

/** The child: a coordinator's network edge as runTraining builds it (mesh log → monitor → streams), no training. */
async function coordinator(limits: Partial<NetLimits>): Promise<void> {
  const { openModelDir } = await import('../coordinator/io/model-dir.ts');
  const { MeshExecutor } = await import('../coordinator/engine/mesh.ts');
  const { RunMonitor } = await import('../coordinator/net/monitor.ts');
  const { startServer } = await import('../coordinator/net/server.ts');
  const { DEMO_MODEL_DIR } = await import('../coordinator/io/paths.ts');
  const { DEMO_LORA, DEMO_TRAIN } = await import('../coordinator/commands/demo.ts');
  const { adapterSpec } = await import('../shared/lora/adapter.ts');
  const { F32 } = await import('../shared/protocol/wire-codec.ts');
  const model = await openModelDir(DEMO_MODEL_DIR);
  const spec = adapterSpec(model.config, DEMO_LORA);
  const manifest = {
    runId: 'memory-attack',
    model: { config: model.config, files: model.files.map(({ name, sha256, bytes }) => ({ name, sha256, bytes })) },
    lora: DEMO_LORA,
    adapter: spec.map((t) => ({ name: t.name, shape: t.shape })),
    wire: { up: F32, down: F32 },
  };
  const counts = { rejectedFrames: 0, droppedStreams: 0 };
  let log = (_line: string) => {};
  const mesh = new MeshExecutor({ manifest, log: (line) => log(line) });
  const monitor = new RunMonitor(
    {
      runId: 'memory-attack',
      model: model.dir,
      modelType: model.config.model_type,
      modelParameters: 0,
      adapterParameters: 0,
      steps: DEMO_TRAIN.steps,
      lora: DEMO_LORA,
      train: DEMO_TRAIN,
      wire: 'f32 up, f32 down',
      local: null,
      arithmetic: 'simd128',
    },
    () => mesh.info(),
  );
  log = (line) => monitor.log(line);
  monitor.subscribe((e) => {
    if (e.kind !== 'log') return;
    if (/rejected frame/.test(e.line)) counts.rejectedFrames++;
    if (/^event stream .* dropped/.test(e.line)) counts.droppedStreams++;
  });
  const server = await startServer({
    host: '127.0.0.1',
    port: 0,
    files: model.files,
    mesh,
    monitor,
    maxPayload: 4 * MB,
    heartbeatMs: 5000,
    token: TOKEN,
    limits,
  });
  console.log(JSON.stringify({ url: server.url }));
  setInterval(() => console.log(JSON.stringify({ ...counts, ...server.openConnections() })), 1000);
  process.on('disconnect', () => process.exit(0));
}

/** One /api/events client that reads the status line, then never reads again; refused ones retry after 1 s. */
class StalledReader {
  private socket: Socket | null = null;
  private timer: NodeJS.Timeout | null = null;
  admitted = false;
  stopped = false;

  constructor(
    private readonly port: number,
    private readonly tally: { admitted: number; refused: number },
    private readonly reopenMs?: number,
  ) {}

  open(): void {
    if (this.stopped) return;
    const socket = connect({ host: '127.0.0.1', port: this.port, localAddress: '127.0.0.1' });
    this.socket = socket;
    this.admitted = false;
    socket.on('error', () => {});
    socket.once('data', (head: Buffer) => {
      socket.pause();
      this.admitted = head.toString('latin1', 0, 12) === 'HTTP/1.1 200';
      if (this.admitted) this.tally.admitted++;
      else this.tally.refused++;
      if (this.admitted && this.reopenMs) this.retry(this.reopenMs);
    });
    // A refused request (429/503, or the TCP cap) is closed by the server: try again.
    socket.on('close', () => {
      if (!this.admitted) this.retry(1000);
    });
    socket.write('GET /api/events HTTP/1.1\r\nHost: loramesh\r\n\r\n');
  }

  private retry(ms: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.socket?.destroy();
      this.open();
    }, ms);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.socket?.destroy();
  }
}

/** An authenticated worker socket that sends garbage until it is quarantined, then reconnects. */
function flood(port: number, stopped: () => boolean, sent: { frames: number }): void {
  if (stopped()) return;
  const headers = { authorization: `Bearer ${TOKEN}` };
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, 'loramesh', { headers, localAddress: '127.0.0.2' });
  ws.on('error', () => {});
  ws.on('open', () => {
    const garbage = new Uint8Array(256).map((_, i) => (i * 89 + 7) & 255);
    for (let i = 0; i < 60; i++) ws.send(garbage);
    sent.frames += 60;
  });
  ws.on('close', () => setTimeout(() => flood(port, stopped, sent), 10));
}

/**
 * Kernel memory of the coordinator's own TCP sockets (the server side of `port`, orphans included):
 * send queues (skmem w) and receive queues (r), from `ss`. Not in its RSS, but the machine's.
 */
function serverSocketsKernelMB(port: number): number {
  const ss = spawnSync('ss', ['-tmnH', 'state', 'all', 'sport', '=', `:${port}`], { encoding: 'utf8' });
  if (ss.status !== 0) return NaN;
  let bytes = 0;
  for (const m of ss.stdout.matchAll(/skmem:\(r(\d+),[^)]*?w(\d+)/g)) bytes += Number(m[1]) + Number(m[2]);
  return bytes / MB;
}

function rssMB(pid: number, field: 'VmRSS' | 'VmHWM' = 'VmRSS'): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

async function runScenario(s: Scenario, seconds: number) {
  const args = ['--import', 'tsx', import.meta.filename, 'coordinator', JSON.stringify(s.limits)];
  const child: ChildProcess = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const lines = createInterface({ input: child.stdout! });
  let stats = { rejectedFrames: 0, droppedStreams: 0, tcp: 0, workers: 0, eventStreams: 0 };
  let maxStreams = 0;
  const url = await new Promise<string>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`coordinator exited with ${code}`)));
    lines.on('line', (line) => {
      const msg = JSON.parse(line);
      if (msg.url) resolve(msg.url);
      else {
        stats = msg;
        maxStreams = Math.max(maxStreams, msg.eventStreams);
      }
    });
  });
  const pid = child.pid!;
  const port = Number(new URL(url).port);
  await sleep(2000);
  const baselineMB = rssMB(pid);
  const sample = (t: number) => ({ t, rssMB: rssMB(pid), socketsKernelMB: serverSocketsKernelMB(port) });
  const samples = [{ ...sample(0), rssMB: baselineMB }];
  const tally = { admitted: 0, refused: 0 };
  const readers = Array.from({ length: EVENT_CLIENTS }, () => new StalledReader(port, tally, s.reopenMs));
  let stopped = false;
  const sent = { frames: 0 };
  readers.forEach((r) => r.open());
  for (let i = 0; i < FLOOD_CLIENTS; i++) flood(port, () => stopped, sent);
  let safetyStop = false;
  for (let t = 1; t <= seconds; t++) {
    await sleep(1000);
    samples.push(sample(t));
    if (samples[samples.length - 1].rssMB > SAFETY_STOP_MB) {
      safetyStop = true;
      break;
    }
  }
  const peakHwmMB = rssMB(pid, 'VmHWM');
  stopped = true;
  readers.forEach((r) => r.stop());
  await sleep(1500);
  const afterMB = rssMB(pid);
  child.disconnect();
  await new Promise((r) => child.once('exit', r));
  const peakMB = Math.max(peakHwmMB, ...samples.map((x) => x.rssMB));
  const attackEndMB = samples[samples.length - 1].rssMB;
  // Still growing at the end (unbounded buffers) or level (bounded): RSS change over the last 10 s.
  const tenBefore = samples[Math.max(0, samples.length - 11)];
  const endSlope = (attackEndMB - tenBefore.rssMB) / Math.max(1, samples.length - 1 - tenBefore.t);
  return {
    name: s.name,
    what: s.what,
    limits: s.limits,
    reopenMs: s.reopenMs ?? null,
    seconds: samples.length - 1,
    safetyStop,
    baselineMB: round(baselineMB),
    peakMB: round(peakMB),
    attackEndMB: round(attackEndMB),
    afterAttackMB: round(afterMB),
    endSlopeMBPerSecond: round(endSlope),
    growthMB: round(peakMB - baselineMB),
    targetMB: TARGET_MB,
    withinTarget: peakMB - baselineMB <= TARGET_MB,
    streamResponses: tally,
    maxConcurrentStreams: maxStreams,
    droppedStreams: stats.droppedStreams,
    framesSent: sent.frames,
    rejectedFrames: stats.rejectedFrames,
    peakSocketsKernelMB: round(Math.max(...samples.map((x) => x.socketsKernelMB))),
    samples: samples.map((x) => ({ t: x.t, rssMB: round(x.rssMB), socketsKernelMB: round(x.socketsKernelMB) })),
  };
}

const round = (x: number) => Math.round(x * 10) / 10;

async function main(): Promise<void> {
  const at = process.argv.indexOf('--seconds');
  const seconds = at > 0 ? Number(process.argv[at + 1]) : 30;
  if (!Number.isInteger(seconds) || seconds < 1) {
    throw new Error(`--seconds should be an integer ≥ 1, got ${JSON.stringify(process.argv[at + 1])}`);
  }
  const started = new Date().toISOString();
  console.log(
    `memory attack: ${EVENT_CLIENTS} non-reading /api/events clients + ` +
      `${FLOOD_CLIENTS} garbage-frame floods, ` +
      `${seconds} s per scenario`,
  );
  const results = [];
  const only = process.argv.indexOf('--only');
  for (const s of SCENARIOS.filter((x) => only < 0 || process.argv[only + 1].split(',').includes(x.name))) {
    const r = await runScenario(s, seconds);
    results.push(r);
    const stop = r.safetyStop ? ` (stopped at ${SAFETY_STOP_MB} MB)` : '';
    console.log(
      `${r.name.padEnd(24)} baseline ${r.baselineMB} MB, peak ${r.peakMB} MB, end ${r.attackEndMB} MB ` +
        `(after ${r.afterAttackMB} MB): peak − baseline ${r.growthMB} MB ` +
        `${r.withinTarget ? '≤' : '>'} ${TARGET_MB} MB target${stop}; last 10 s ${r.endSlopeMBPerSecond} MB/s`,
    );
    const { admitted, refused } = r.streamResponses;
    console.log(
      `${''.padEnd(24)} streams: ${admitted} admitted, ${refused} refused, ` +
        `at most ${r.maxConcurrentStreams} open, ${r.droppedStreams} dropped; ` +
        `${r.framesSent} garbage frames sent, ${r.rejectedFrames} rejected; ` +
        `its sockets' kernel buffers peak ${r.peakSocketsKernelMB} MB`,
    );
  }
  const path = writeJson(only < 0 ? 'memory-attack' : 'memory-attack.partial', {
    date: started,
    command: 'npm run bench:memory-attack',
    machine: machine(),
    eventClients: EVENT_CLIENTS,
    floodClients: FLOOD_CLIENTS,
    targetMB: TARGET_MB,
    scenarios: results,
  });
  console.log(`wrote ${path}`);
  if (only >= 0) return;
  replaceSection(
    'memory-attack-table',
    'Memory under a stream and frame attack (`npm run bench:memory-attack`)',
    [
      provenance(started, 'npm run bench:memory-attack'),
      '',
      `${EVENT_CLIENTS} \`/api/events\` clients that never read, ` +
        `plus ${FLOOD_CLIENTS} authenticated sockets flooding garbage frames, ` +
        `${seconds} s per scenario; coordinator RSS from /proc (target: peak ≤ baseline + ${TARGET_MB} MB).`,
      '',
      '| scenario | baseline | peak | end | peak − baseline | within target ' +
        '| streams admitted / refused / dropped | frames rejected |',
      '|---|---:|---:|---:|---:|---|---|---:|',
      ...results.map(
        (r) =>
          `| ${r.name} | ${r.baselineMB} MB | ${r.peakMB} MB | ${r.attackEndMB} MB | ${r.growthMB} MB ` +
          `| ${r.withinTarget ? 'yes' : '**no**'} ` +
          `| ${r.streamResponses.admitted} / ${r.streamResponses.refused} / ${r.droppedStreams} ` +
          `| ${r.rejectedFrames} |`,
      ),
    ].join('\n'),
  );
}

if (process.argv[2] === 'coordinator') await coordinator(JSON.parse(process.argv[3]));
else await main();
