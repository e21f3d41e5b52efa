/** Listening on host:port, and why it failed, in words that name the flag. */
import { createServer } from 'node:net';
import { ErrorCodes, LoraMeshError } from '../../shared/errors.ts';

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
