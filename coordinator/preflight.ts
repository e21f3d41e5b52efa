/**
 * Checks of a `train` command's deployment settings that can fail, made before the model loads
 * (which takes minutes at real sizes): the address can be listened on, the token and TLS files
 * can be read. Each failure is one LM_ERR_CONFIG line naming the flag and the value.
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { ErrorCodes, fail, LoraMeshError } from '../shared/errors.ts';

/** Reads a file a flag names, or fails naming the flag. */
export function readFlagFile(flag: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    fail(
      ErrorCodes.CONFIG,
      `${flag} ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    );
  }
}

/** The reason a listen on host:port failed, in words, as an LM_ERR_CONFIG error. */
export function listenError(host: string, port: number, err: NodeJS.ErrnoException): LoraMeshError {
  const why: Record<string, string> = {
    EADDRINUSE: `--port ${port} is already in use on ${host}; pick another or --port 0 for a free one`,
    EADDRNOTAVAIL: `--host ${host} is not an address of this machine`,
    EACCES: `--port ${port} on ${host} needs privileges this process lacks (use a port ≥ 1024)`,
    ENOTFOUND: `--host ${host} does not resolve to an address`,
    EAI_AGAIN: `--host ${host} could not be resolved right now`,
  };
  return new LoraMeshError(
    ErrorCodes.CONFIG,
    why[err.code ?? ''] ?? `cannot listen on ${host}:${port} (${err.code ?? err.message})`,
  );
}

/** Listens on host:port and closes again, so a taken port or a foreign address fails before the model loads. */
export function checkListen(host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', (err: NodeJS.ErrnoException) => reject(listenError(host, port, err)));
    probe.listen(port, host, () => probe.close(() => resolve()));
  });
}
