/**
 * `loramesh <args>` as a child process from the TypeScript source, for tests that run real coordinators, relays
 * and workers: each output line goes to `logs` prefixed with `tag`, and the child to `children` (kill them in
 * `after`).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { packagePath } from '../../node/package-root.ts';

const cli = packagePath('coordinator', 'cli.ts');

export function cliSpawner(
  logs: string[],
  children: ChildProcess[],
): (tag: string, args: string[], env?: Record<string, string>) => ChildProcess {
  return (tag, args, env = {}) => {
    const child = spawn(process.execPath, ['--import', 'tsx', cli, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    for (const stream of [child.stdout!, child.stderr!])
      stream.on('data', (chunk: Buffer) =>
        logs.push(
          ...chunk
            .toString()
            .trim()
            .split('\n')
            .map((l) => `${tag} ${l}`),
        ),
      );
    children.push(child);
    return child;
  };
}
