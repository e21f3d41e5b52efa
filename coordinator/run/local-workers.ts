/** Starts worker processes on this machine (`--local-workers N`), each a `loramesh worker` child. */
import { spawn, type ChildProcess } from 'node:child_process';
import { cliCommand } from '../../node/package-root.ts';

export interface LocalWorkerOptions {
  backend: string;
  cacheDir?: string;
  token?: string;
  /** where each child's output goes: 'inherit' shows it, 'ignore' keeps the terminal quiet */
  stdio?: 'inherit' | 'ignore' | 'pipe';
  /** extra environment per worker (index from 0), e.g. LORAMESH_FAULT for fault injection */
  env?: (index: number) => Record<string, string>;
}

export function spawnLocalWorkers(count: number, url: string, opts: LocalWorkerOptions): ChildProcess[] {
  return Array.from({ length: count }, (_, i) => {
    const args = [...cliCommand(), 'worker', url, '--backend', opts.backend, '--name', `local-${i + 1}`];
    if (opts.cacheDir) args.push('--cache-dir', opts.cacheDir);
    const env = { ...process.env, ...(opts.token ? { LORAMESH_TOKEN: opts.token } : {}), ...(opts.env?.(i) ?? {}) };
    // The IPC channel closes when this process dies (even by SIGKILL): the worker exits with it.
    return spawn(process.execPath, [...args, '--exit-with-parent'], {
      stdio: ['ignore', opts.stdio ?? 'inherit', opts.stdio ?? 'inherit', 'ipc'],
      env,
    });
  });
}

export async function stopLocalWorkers(children: ChildProcess[], graceMs = 5000): Promise<void> {
  await Promise.all(
    children.map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.exitCode !== null || c.signalCode !== null) return resolve();
          const timer = setTimeout(() => c.kill('SIGKILL'), graceMs);
          c.once('exit', () => {
            clearTimeout(timer);
            resolve();
          });
          c.kill('SIGTERM');
        }),
    ),
  );
}
