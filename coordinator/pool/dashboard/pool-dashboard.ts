/**
 * The pool's dashboard (issue 18). Opened as /#token=<tenant token> it polls /pool/api/status and shows that
 * tenant's runs with their loss curves; with the admin's token, every run and its tenant. Without a token it
 * shows the public view (/api/status): the base, the workers and how many runs are in each state, no run
 * names. The token stays in the fragment (never sent in a URL) and goes out as a bearer header. Everything
 * shown goes through textContent, never innerHTML, so names cannot inject markup.
 */

interface WorkerRow {
  id: string;
  name: string;
  platform: string;
  backend: string;
  slow: boolean;
  arithmetic: string[];
  state: string;
  runs: number;
  busy: boolean;
  microBatches: number;
}
interface RunRow {
  id: string;
  name: string;
  tenant?: string;
  state: string;
  step: number;
  steps: number;
  weight: number;
  priority: number;
  losses: [number, number][];
}
interface PoolSummary {
  model: string;
  baseFormat: { format: string } | null;
  inProcess: boolean;
}
interface PublicStatus {
  pool: PoolSummary;
  workers: WorkerRow[];
  runs: Record<string, number>;
}
interface CallerStatus {
  pool: PoolSummary;
  admin: boolean;
  workers: WorkerRow[];
  runs: RunRow[];
}

const COLOURS = ['#2563eb', '#ea580c', '#16a34a', '#9333ea', '#dc2626', '#0891b2', '#ca8a04', '#db2777'];
const $ = (id: string) => document.getElementById(id)!;
const setText = (id: string, text: string) => {
  $(id).textContent = text;
};

function cellRow(cells: string[], attrs: Record<string, string> = {}): HTMLTableRowElement {
  const tr = document.createElement('tr');
  for (const [k, v] of Object.entries(attrs)) tr.dataset[k] = v;
  for (const text of cells) {
    const td = document.createElement('td');
    td.textContent = text;
    tr.append(td);
  }
  return tr;
}

function renderPool(pool: PoolSummary, workers: WorkerRow[]): void {
  setText('pool-model', pool.model);
  setText(
    'pool-config',
    `base ${pool.baseFormat ? pool.baseFormat.format : 'float32'} · ` +
      (pool.inProcess ? 'the pool computes every run itself' : 'workers join once and serve every run'),
  );
  setText('workers-ready', String(workers.filter((w) => w.state === 'ready').length));
  setText('workers-busy', String(workers.filter((w) => w.busy).length));
  setText('worker-count', `(${workers.length})`);
  $('workers').replaceChildren(
    ...workers.map((w) =>
      cellRow(
        [
          w.id,
          w.name,
          w.platform,
          w.backend + (w.slow ? ' (slow fallback)' : ''),
          w.arithmetic.join(', ') || '–',
          String(w.runs),
          String(w.microBatches),
          w.busy ? 'computing' : w.state,
        ],
        { workerId: w.id },
      ),
    ),
  );
  setText('join-url', `${location.origin}/join`);
}

function renderCounts(counts: Record<string, number>): void {
  setText('runs-running', String(counts.running ?? 0));
  setText('runs-queued', String(counts.queued ?? 0));
  setText('runs-done', String(counts.done ?? 0));
}

function renderPublic(s: PublicStatus): void {
  renderPool(s.pool, s.workers);
  renderCounts(s.runs);
  setText('who', 'public view: open this page as /#token=<your tenant token> to see your runs');
  setText('run-count', '');
  $('runs').replaceChildren();
  $('loss-chart').replaceChildren();
}

function renderCaller(s: CallerStatus): void {
  renderPool(s.pool, s.workers);
  const counts: Record<string, number> = {};
  for (const r of s.runs) counts[r.state] = (counts[r.state] ?? 0) + 1;
  renderCounts(counts);
  setText('who', s.admin ? 'admin view: every run of every tenant' : 'your runs');
  setText('run-count', `(${s.runs.length})`);
  const head = $('runs-head');
  if (s.admin && !head.querySelector('.tenant')) {
    const th = document.createElement('th');
    th.className = 'tenant';
    th.textContent = 'tenant';
    head.insertBefore(th, head.children[2]);
  }
  $('runs').replaceChildren(
    ...s.runs.map((r, i) => {
      const last = r.losses[r.losses.length - 1];
      const cells = [
        r.name,
        r.id,
        ...(s.admin ? [r.tenant ?? ''] : []),
        r.state,
        `${r.step} / ${r.steps}`,
        `priority ${r.priority}, weight ${r.weight}`,
        last ? last[1].toFixed(4) : '–',
      ];
      const tr = cellRow(cells, { runId: r.id });
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = COLOURS[i % COLOURS.length];
      tr.children[0].prepend(swatch);
      return tr;
    }),
  );
  renderChart(s.runs);
}

function renderChart(runs: RunRow[]): void {
  const svg = $('loss-chart');
  svg.replaceChildren();
  const all = runs.flatMap((r) => r.losses.map(([, loss]) => loss)).filter(Number.isFinite);
  if (all.length === 0) return;
  const maxStep = Math.max(1, ...runs.flatMap((r) => r.losses.map(([step]) => step)));
  const hi = Math.max(...all);
  const lo = Math.min(...all) - 0.05 * (hi - Math.min(...all) || 1);
  const x = (step: number) => 10 + (980 * step) / maxStep;
  const y = (loss: number) => 230 - (210 * (loss - lo)) / Math.max(1e-9, hi - lo);
  const ns = 'http://www.w3.org/2000/svg';
  runs.forEach((r, i) => {
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', r.losses.map(([s, l]) => `${x(s).toFixed(1)},${y(l).toFixed(1)}`).join(' '));
    line.setAttribute('fill', 'none');
    line.setAttribute('stroke', COLOURS[i % COLOURS.length]);
    line.setAttribute('stroke-width', '2');
    line.setAttribute('vector-effect', 'non-scaling-stroke');
    line.setAttribute('data-run', r.id);
    line.setAttribute('data-points', String(r.losses.length));
    line.setAttribute('class', 'run-line');
    svg.append(line);
  });
  const label = document.createElementNS(ns, 'text');
  label.setAttribute('x', '14');
  label.setAttribute('y', '20');
  label.setAttribute('font-size', '14');
  label.textContent = `${lo.toFixed(3)} … ${hi.toFixed(3)}`;
  svg.append(label);
}

const token = new URLSearchParams(location.hash.slice(1)).get('token');

let pending = false;
async function refresh(): Promise<void> {
  if (pending) return;
  pending = true;
  try {
    if (token) {
      const res = await fetch('/pool/api/status', { cache: 'no-store', headers: { authorization: `Bearer ${token}` } });
      if (res.ok) renderCaller(await res.json());
      else setText('who', `the pool refused this token (${res.status}): open the page as /#token=<your tenant token>`);
    } else {
      const res = await fetch('/api/status', { cache: 'no-store' });
      if (res.ok) renderPublic(await res.json());
    }
  } catch {
    setText('who', 'pool unreachable');
  } finally {
    pending = false;
  }
}

void refresh();
setInterval(refresh, 1000);
