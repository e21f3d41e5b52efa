/**
 * The pool's client commands (issue 18): `loramesh tenant`, `submit`, `runs`, `fetch`, `cancel`, each a
 * few calls of the pool's HTTP API (coordinator/pool/api.ts). A refusal prints the pool's own code and
 * message (`loramesh: LM_ERR_QUOTA: …`, exit 2).
 */
import { readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { type ErrorCode, ErrorCodes, fail, LoraMeshError } from '../../shared/errors.ts';

export interface PoolClient {
  url: string;
  token: string;
}

/** The pool's URL and the caller's token, from flags or the environment. */
export function poolClient(
  o: { pool?: string; token?: string },
  env: 'LORAMESH_POOL_TOKEN' | 'LORAMESH_POOL_ADMIN_TOKEN',
): PoolClient {
  const url = o.pool ?? process.env.LORAMESH_POOL;
  if (!url) fail(ErrorCodes.CONFIG, '--pool <url> (or LORAMESH_POOL) is needed: the pool the command talks to');
  const token = o.token ?? process.env[env];
  if (!token) fail(ErrorCodes.CONFIG, `--token (or ${env}) is needed`);
  return { url: url.replace(/\/+$/, ''), token };
}

async function call(c: PoolClient, method: string, path: string, body?: Uint8Array | string): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(`${c.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${c.token}` },
      body: body as RequestInit['body'],
    });
  } catch (err) {
    return fail(
      ErrorCodes.LIMIT,
      `cannot reach the pool at ${c.url} (${(err as Error).cause ?? (err as Error).message})`,
    );
  }
  if (res.ok) return res;
  const text = await res.text();
  let reply: { error?: string; message?: string } = {};
  try {
    reply = JSON.parse(text);
  } catch {}
  const code = (Object.values(ErrorCodes) as string[]).includes(reply.error ?? '')
    ? (reply.error as ErrorCode)
    : ErrorCodes.STATE;
  throw new LoraMeshError(code, reply.message ?? `${method} ${path}: HTTP ${res.status} ${text.slice(0, 200)}`);
}

const json = async (res: Response) => (await res.json()) as Record<string, unknown>;

interface RunView {
  id: string;
  name: string;
  state: string;
  step: number;
  steps: number;
  weight: number;
  priority: number;
  error: string | null;
}

export async function tenantAdd(c: PoolClient, name: string, quotas: Record<string, number>): Promise<string> {
  const made = await json(await call(c, 'POST', '/pool/api/tenants', JSON.stringify({ name, quotas })));
  const tenant = made.tenant as { id: string; quotas: Record<string, number> };
  return [
    `tenant ${name} (${tenant.id}) with quotas ${JSON.stringify(tenant.quotas)}`,
    `token (shown once; the pool keeps its hash): ${made.token as string}`,
  ].join('\n');
}

export async function tenantRevoke(c: PoolClient, id: string): Promise<string> {
  await call(c, 'DELETE', `/pool/api/tenants/${encodeURIComponent(id)}`);
  return `tenant ${id} revoked`;
}

/** Uploads `data` and submits a run of `run` settings; returns the run's line. */
export async function submit(
  c: PoolClient,
  data: string,
  submission: { name?: string; run: Record<string, unknown>; weight?: number; priority?: number },
  log: (line: string) => void,
): Promise<string> {
  let bytes: Buffer;
  try {
    if (!statSync(data).isFile()) fail(ErrorCodes.DATA, `${data}: not a file`);
    bytes = readFileSync(data);
  } catch (err) {
    if (err instanceof LoraMeshError) throw err;
    return fail(ErrorCodes.DATA, `${data}: cannot be read (${(err as Error).message})`);
  }
  // the pool checks the settings first, so a refused run uploads nothing
  await call(c, 'POST', '/pool/api/runs/check', JSON.stringify(submission));
  const up = await json(
    await call(c, 'PUT', `/pool/api/uploads?name=${encodeURIComponent(basename(data))}`, new Uint8Array(bytes)),
  );
  const upload = up.upload as { id: string; examples: number; bytes: number };
  const how = up.reused ? 'already uploaded' : 'uploaded';
  log(`${how} ${basename(data)}: ${upload.bytes} bytes, ${upload.examples} examples (${upload.id})`);
  const made = await json(
    await call(c, 'POST', '/pool/api/runs', JSON.stringify({ uploadId: upload.id, ...submission })),
  );
  return describeRun(made.run as RunView);
}

function describeRun(r: RunView): string {
  const share = `weight ${r.weight}${r.priority ? `, priority ${r.priority}` : ''}`;
  return `${r.id}  ${r.state.padEnd(9)} step ${r.step}/${r.steps}  ${share}  ${r.name}${r.error ? `  (${r.error})` : ''}`;
}

export async function listRuns(c: PoolClient): Promise<string> {
  const runs = (await json(await call(c, 'GET', '/pool/api/runs'))).runs as RunView[];
  return runs.length === 0 ? 'no runs' : runs.map(describeRun).join('\n');
}

export async function cancelRun(c: PoolClient, id: string): Promise<string> {
  return describeRun(
    (await json(await call(c, 'POST', `/pool/api/runs/${encodeURIComponent(id)}/cancel`))).run as RunView,
  );
}

/** Writes a finished run's PEFT files into `out`. */
export async function fetchRun(c: PoolClient, id: string, out: string): Promise<string> {
  mkdirSync(out, { recursive: true });
  const written: string[] = [];
  for (const name of ['adapter_config.json', 'adapter_model.safetensors']) {
    const res = await call(c, 'GET', `/pool/api/runs/${encodeURIComponent(id)}/files/${name}`);
    const bytes = new Uint8Array(await res.arrayBuffer());
    writeFileSync(join(out, name), bytes);
    written.push(`${name} (${bytes.length} bytes)`);
  }
  return `run ${id}: ${written.join(', ')} in ${out}`;
}
