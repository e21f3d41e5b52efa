/**
 * The live dashboard: polls /api/status and listens to /api/events (Server-Sent Events) for
 * steps, eval points and log lines. Everything shown goes through textContent, never innerHTML,
 * so worker names and log lines cannot inject markup.
 */

interface StepRecord {
  step: number;
  loss: number;
  tokensPerSecond: number;
  bytesUp: number;
  bytesDown: number;
  fp32LoraBytes: number;
  fullFineTuneBytes: number;
  samples: number;
}
interface WorkerRow {
  id: string;
  name: string;
  platform: string;
  backend: string;
  adapter: string;
  slow: boolean;
  arithmetic: string[];
  state: string;
  throughput: number;
  microBatchesDone: number;
  used: number;
  discarded: number;
  lastSeen: number;
}
interface Status {
  summary: {
    runId: string;
    model: string;
    modelType: string;
    modelParameters: number;
    adapterParameters: number;
    steps: number;
    lora: Record<string, unknown>;
    train: Record<string, unknown>;
    wire: string | null;
    local: { steps: number; outerLr: number; outerMomentum: number } | null;
    arithmetic?: string;
  };
  step: number;
  finished: boolean;
  etaSeconds: number | null;
  steps: StepRecord[];
  evals: { step: number; loss: number }[];
  workers: WorkerRow[];
  log: string[];
}

const $ = (id: string) => document.getElementById(id)!;
const setText = (id: string, text: string) => {
  $(id).textContent = text;
};
const fmtBytes = (b: number) =>
  b >= 1e9 ? `${(b / 1e9).toFixed(2)} GB` : b >= 1e6 ? `${(b / 1e6).toFixed(2)} MB` : `${(b / 1e3).toFixed(1)} kB`;
const fmtTime = (s: number) =>
  s >= 3600
    ? `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`
    : s >= 60
      ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`
      : `${Math.round(s)} s`;

function render(s: Status): void {
  const sum = s.summary;
  setText('run-id', sum.runId);
  const lora = sum.lora as { r: number; alpha: number; targetModules: string[] };
  setText(
    'run-config',
    `${sum.model} (${sum.modelType}, ${sum.modelParameters.toLocaleString()} params) · ` +
      `LoRA r=${lora.r} α=${lora.alpha} on ${lora.targetModules.join(', ')} ` +
      `(${sum.adapterParameters.toLocaleString()} trainable) · ${describeTrain(sum.train)}` +
      `${sum.wire ? ` · wire ${sum.wire}` : ''}` +
      `${sum.arithmetic ? ` · arithmetic ${sum.arithmetic}` : ''}` +
      `${
        sum.local
          ? ` · local steps H=${sum.local.steps} (outer lr ${sum.local.outerLr}, momentum ${sum.local.outerMomentum})`
          : ''
      }`,
  );
  setText('step', `${s.step} / ${sum.steps}${s.finished ? ' ✓' : ''}`);
  setText('eta', s.finished ? 'done' : s.etaSeconds === null ? '–' : fmtTime(s.etaSeconds));
  const last = s.steps[s.steps.length - 1];
  setText('loss', last ? last.loss.toFixed(4) : '–');
  const lastEval = s.evals[s.evals.length - 1];
  setText('eval-loss', lastEval ? `${lastEval.loss.toFixed(4)} @${lastEval.step}` : '–');
  setText('tps', last ? last.tokensPerSecond.toFixed(0) : '–');
  if (last) {
    const moved = last.bytesUp + last.bytesDown;
    setText('bytes', `${fmtBytes(last.bytesUp)} + ${fmtBytes(last.bytesDown)}`);
    // Both baselines are synchronous fp32 training of the same samples (× H in local-steps mode).
    const more = (b: number) => `${fmtBytes(b)} (${(b / Math.max(1, moved)).toFixed(1)}× more)`;
    setText(
      'bytes-vs-full',
      `fp32 LoRA: ${more(last.fp32LoraBytes)} · full fine-tuning: ${more(last.fullFineTuneBytes)}`,
    );
  }
  renderChart(s.steps, s.evals);
  renderWorkers(s.workers);
  setText('log', s.log.join('\n'));
  setText('join-url', `${location.origin}/join`);
}

function describeTrain(t: Record<string, unknown>): string {
  return (
    `${t.steps} steps × ${t.globalBatch} sequences (micro-batch ${t.microBatch}), ` +
    `lr ${t.lr}, warm-up ${t.warmupSteps}, clip ${t.clipNorm}, seed ${t.seed}`
  );
}

function renderChart(steps: StepRecord[], evals: { step: number; loss: number }[]): void {
  const svg = $('loss-chart');
  svg.replaceChildren();
  const all = [...steps.map((p) => p.loss), ...evals.map((e) => e.loss)].filter(Number.isFinite);
  if (all.length === 0) return;
  const maxStep = Math.max(1, ...steps.map((p) => p.step), ...evals.map((e) => e.step));
  const hi = Math.max(...all);
  const lo = Math.min(...all) - 0.05 * (hi - Math.min(...all) || 1);
  const x = (step: number) => 10 + (980 * step) / maxStep;
  const y = (loss: number) => 210 - (200 * (loss - lo)) / Math.max(1e-9, hi - lo);
  const ns = 'http://www.w3.org/2000/svg';
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('points', steps.map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(' '));
  line.setAttribute('fill', 'none');
  line.setAttribute('stroke', '#2563eb');
  line.setAttribute('stroke-width', '2');
  line.setAttribute('vector-effect', 'non-scaling-stroke');
  line.setAttribute('data-points', String(steps.length));
  line.id = 'train-line';
  svg.append(line);
  for (const e of evals) {
    const dot = document.createElementNS(ns, 'circle');
    dot.setAttribute('cx', x(e.step).toFixed(1));
    dot.setAttribute('cy', y(e.loss).toFixed(1));
    dot.setAttribute('r', '5');
    dot.setAttribute('fill', '#ea580c');
    dot.setAttribute('class', 'eval-point');
    svg.append(dot);
  }
  const label = document.createElementNS(ns, 'text');
  label.setAttribute('x', '14');
  label.setAttribute('y', '20');
  label.setAttribute('font-size', '14');
  label.textContent = `${lo.toFixed(3)} … ${hi.toFixed(3)}`;
  svg.append(label);
}

function renderWorkers(workers: WorkerRow[]): void {
  setText('worker-count', `(${workers.length})`);
  const rows = workers.map((w) => {
    const tr = document.createElement('tr');
    tr.dataset.workerId = w.id;
    const cells = [
      w.id,
      w.name,
      w.platform,
      w.backend + (w.slow ? ' (slow fallback)' : ''),
      w.arithmetic.join(', ') || '–',
      w.adapter || '–',
      w.throughput.toFixed(0),
      `${w.microBatchesDone} (${w.used} used, ${w.discarded} discarded)`,
      `${Math.max(0, Math.round((Date.now() - w.lastSeen) / 1000))} s ago`,
      w.state,
    ];
    for (const [i, text] of cells.entries()) {
      const td = document.createElement('td');
      td.textContent = text;
      if (i === 3 && w.slow) td.className = 'warn';
      tr.append(td);
    }
    return tr;
  });
  $('workers').replaceChildren(...rows);
}

// With --dashboard-access admin, open the dashboard as /#admin=<token>: the token stays in the
// fragment (never sent in a URL) and goes to /api/status as a bearer header.
const adminToken = new URLSearchParams(location.hash.slice(1)).get('admin');
const headers: Record<string, string> = adminToken ? { authorization: `Bearer ${adminToken}` } : {};

let pending = false;
async function refresh(): Promise<void> {
  if (pending) return;
  pending = true;
  try {
    const res = await fetch('/api/status', { cache: 'no-store', headers });
    if (res.ok) render(await res.json());
    else if (res.status === 401) setText('eta', 'this dashboard needs the admin token: open it as /#admin=…');
  } catch {
    setText('eta', 'coordinator unreachable');
  } finally {
    pending = false;
  }
}

void refresh();
if (adminToken)
  setInterval(refresh, 1000); // EventSource cannot send headers: poll instead
else {
  setInterval(refresh, 2000);
  const events = new EventSource('/api/events');
  events.onmessage = () => void refresh();
}
