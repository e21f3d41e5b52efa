/**
 * What the join page shows about this tab: state, backend, device, limits, progress, log. Every
 * value goes through textContent (never innerHTML), so names and messages from the coordinator
 * cannot inject markup. Element ids are stable: tests and people read them.
 */

export type JoinState =
  | 'starting'
  | 'connecting'
  | 'joining'
  | 'loading'
  | 'ready'
  | 'computing'
  | 'reconnecting'
  | 'finished'
  | 'left'
  | 'error';

export interface JoinStatus {
  state: JoinState;
  /** one line of detail for the state (what is loading, why it reconnects, the error) */
  detail: string;
  backend: string;
  adapter: string;
  slow: boolean;
  slowReason: string;
  limits: string;
  workerId: string;
  runId: string;
  /** micro-batches this tab computed and sent */
  done: number;
  /** mean token loss of the last micro-batch (lossSum / tokenCount) */
  lastLoss: number | null;
  lastComputeMs: number | null;
  base: string;
}

const MAX_LOG_LINES = 200;

export class JoinView {
  readonly status: JoinStatus = {
    state: 'starting',
    detail: '',
    backend: '',
    adapter: '',
    slow: false,
    slowReason: '',
    limits: '',
    workerId: '',
    runId: '',
    done: 0,
    lastLoss: null,
    lastComputeMs: null,
    base: '',
  };
  readonly logLines: string[] = [];

  constructor(private readonly doc: Document) {
    this.render();
  }

  set(patch: Partial<JoinStatus>): void {
    Object.assign(this.status, patch);
    this.render();
  }

  log(line: string): void {
    const stamped = `${new Date().toISOString().slice(11, 19)} ${line}`;
    this.logLines.push(stamped);
    if (this.logLines.length > MAX_LOG_LINES) this.logLines.shift();
    console.log(`[loramesh] ${line}`);
    const list = this.doc.getElementById('log');
    if (!list) return;
    const item = this.doc.createElement('li');
    item.textContent = stamped;
    list.prepend(item);
    while (list.childElementCount > MAX_LOG_LINES) list.lastElementChild!.remove();
  }

  private text(id: string, value: string): void {
    const el = this.doc.getElementById(id);
    if (el && el.textContent !== value) el.textContent = value;
  }

  private render(): void {
    const s = this.status;
    this.text('state', s.state);
    this.text('state-detail', s.detail);
    this.doc.body.dataset.state = s.state;
    this.text('backend', s.backend || '–');
    this.text('adapter', s.adapter || '–');
    this.text(
      'slow',
      s.backend ? (s.slow ? `slow (${s.slowReason}): correct, but expect little throughput` : 'full speed') : '–',
    );
    this.text('limits', s.limits || '–');
    this.text('worker-id', s.workerId || '–');
    this.text('run-id', s.runId || '–');
    this.text('done', String(s.done));
    this.text('loss', s.lastLoss === null ? '–' : s.lastLoss.toFixed(4));
    this.text('compute-ms', s.lastComputeMs === null ? '–' : `${s.lastComputeMs.toFixed(0)} ms`);
    this.text('base', s.base || '–');
    this.doc.title = `loramesh · ${s.state}${s.done ? ` · ${s.done} done` : ''}`;
  }
}
