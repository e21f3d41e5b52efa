/**
 * A few child processes of simulated workers (sim-workers.ts), so the coordinator process is
 * measured alone: sessions are spread round-robin over the children.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import type { SimCommand, SimReply } from './sim-workers.ts';

const childPath = fileURLToPath(new URL('./sim-workers.ts', import.meta.url));
const tsxLoader = import.meta.resolve('tsx');

export class SimWorkerPool {
  private readonly children: ChildProcess[];
  private readonly errors: string[] = [];

  constructor(processes: number) {
    this.children = Array.from({ length: processes }, () => {
      // advanced serialization: typed arrays cross the IPC channel as bytes, not JSON
      const child = fork(childPath, [], {
        execArgv: ['--import', tsxLoader],
        serialization: 'advanced',
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      child.on('message', (m: SimReply) => {
        if (m.type === 'error' && this.errors.length < 20) this.errors.push(m.message);
      });
      return child;
    });
  }

  get size(): number {
    return this.children.length;
  }

  /** Connection errors reported by the children so far (at most 20). */
  get connectionErrors(): readonly string[] {
    return this.errors;
  }

  /** Opens `sessions` simulated workers on `url`, each computing for `computeMs` per assignment. */
  connect(url: string, sessions: number, computeMs: number): void {
    this.children.forEach((child, i) => {
      const share = Math.floor(sessions / this.size) + (i < sessions % this.size ? 1 : 0);
      if (share > 0) this.send(child, { type: 'connect', url, sessions: share, computeMs, namePrefix: `sim${i}` });
    });
  }

  /** `relays` relays on `url` (spread over the children), each with `sessions` simulated workers. */
  connectRelayed(url: string, token: string, relays: number, sessions: number, computeMs: number): void {
    this.children.forEach((child, i) => {
      const share = Math.floor(relays / this.size) + (i < relays % this.size ? 1 : 0);
      if (share > 0)
        this.send(child, { type: 'relay', url, token, relays: share, sessions, computeMs, namePrefix: `sim${i}` });
    });
  }

  /** CPU time (µs, user + system) used by all children so far, and their summed RSS. */
  async usage(): Promise<{ cpuUs: number; rssBytes: number }> {
    const replies = await Promise.all(this.children.map((child) => this.request(child, { type: 'cpu' }, 'cpu')));
    return {
      cpuUs: replies.reduce((s, r) => s + r.userUs + r.systemUs, 0),
      rssBytes: replies.reduce((s, r) => s + r.rssBytes, 0),
    };
  }

  /** The next result frame any session of the first child sends, as it went on the wire. */
  async captureResultFrame(): Promise<Uint8Array> {
    const r = await this.request(this.children[0], { type: 'capture' }, 'frame');
    return r.bytes;
  }

  async close(): Promise<void> {
    await Promise.all(
      this.children.map(async (child) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = once(child, 'exit');
        child.disconnect();
        const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }

  private send(child: ChildProcess, cmd: SimCommand): void {
    child.send(cmd);
  }

  private request<T extends SimReply['type']>(
    child: ChildProcess,
    cmd: SimCommand,
    type: T,
  ): Promise<Extract<SimReply, { type: T }>> {
    return new Promise((resolve, reject) => {
      const onMessage = (m: SimReply) => {
        if (m.type !== type) return;
        child.off('message', onMessage);
        child.off('exit', onExit);
        resolve(m as Extract<SimReply, { type: T }>);
      };
      const onExit = (code: number | null) => {
        child.off('message', onMessage);
        reject(new Error(`simulated worker process exited (code ${code}) before answering ${cmd.type}`));
      };
      child.on('message', onMessage);
      child.once('exit', onExit);
      this.send(child, cmd);
    });
  }
}
