/**
 * The pool's HTTP API (issue 18), under /pool/api/. Every refusal is JSON `{ error: <LM_ERR_* code>,
 * message }` with a status that says the same (pool-errors below). A tenant's bearer token sees and
 * controls only its own uploads and runs: another tenant's run is "not found" (404), the same answer as
 * a run that does not exist, so ids leak nothing. The admin token (separate from the workers' join
 * token) manages tenants and sees everything. Each token has a request budget (requestsPerSecond, 2 s of
 * burst): past it, 429 LM_ERR_RATE.
 *
 *   POST   /pool/api/tenants               admin: { name, quotas? } → 201 { tenant, token }
 *   GET    /pool/api/tenants               admin: every tenant
 *   DELETE /pool/api/tenants/:id           admin: revoke the tenant's token
 *   PUT    /pool/api/uploads?name=f.jsonl  a data file as the body (Content-Length required): the quota is
 *                                          checked on the declared length before a byte is stored, the file
 *                                          then validated as `train --data` does (errors name f.jsonl:line);
 *                                          the same file (name and sha256) again reuses the stored one
 *   POST   /pool/api/runs/check            { name?, run, weight?, priority? }: checked, nothing stored
 *   POST   /pool/api/runs                  { uploadId, name?, run, weight?, priority? } → 201 { run }
 *   GET    /pool/api/runs                  the caller's runs (admin: all)
 *   GET    /pool/api/runs/:id              one run
 *   POST   /pool/api/runs/:id/cancel       cancel an unfinished run
 *   GET    /pool/api/status                the dashboard's view: the caller's runs with loss curves (admin:
 *                                          all), and the workers without run names
 *   GET    /pool/api/runs/:id/files/:name  a finished run's adapter file (PEFT's adapter_model.safetensors,
 *                                          adapter_config.json)
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createReadStream, createWriteStream, mkdirSync, rmSync, statSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { basename, join } from 'node:path';
import { nanoid } from 'nanoid';
import { ErrorCodes, LoraMeshError, fail, type ErrorCode } from '../../shared/errors.ts';
import { dataFileFormat } from '../io/dataset.ts';
import { TokenBucket } from '../engine/token-bucket.ts';
import type { PoolRegistry, PoolRun, Tenant } from './registry.ts';
import type { PoolMonitor } from './pool-monitor.ts';
import { checkSubmission, type PoolBase, type Submission } from './submission.ts';

export interface PoolApiOptions {
  registry: PoolRegistry;
  base: PoolBase;
  /** the pool folder: uploads go to uploads/<id>/<name> inside it */
  dir: string;
  /** the admin's bearer token (null: no admin routes) */
  adminToken: string | null;
  /**
   * Validates a stored upload as `train --data` would read it; throws LM_ERR_DATA naming `path:line`.
   * Returns the number of examples.
   */
  validateUpload: (path: string) => Promise<number>;
  /** a run was queued (the pool starts scheduling it) */
  onSubmit?: (run: PoolRun, submission: Submission) => void;
  /** a run was cancelled (the pool stops it at the next micro-batch boundary) */
  onCancel?: (run: PoolRun) => void;
  /** where a finished run's file is, or null */
  runFile?: (run: PoolRun, name: string) => string | null;
  /** largest JSON body accepted (default 1 MiB) */
  maxJsonBytes?: number;
  /** the dashboard's view (GET /pool/api/status) */
  monitor?: PoolMonitor;
  /** requests per second one token (a tenant's, the admin's) may make, with 2 s of burst (default 50) */
  requestsPerSecond?: number;
}

/** HTTP status per error code: the code is the contract, the status says the same for HTTP tools. */
const STATUS: Partial<Record<ErrorCode, number>> = {
  [ErrorCodes.AUTH]: 401,
  [ErrorCodes.NOT_FOUND]: 404,
  [ErrorCodes.STATE]: 409,
  [ErrorCodes.QUOTA]: 403,
  [ErrorCodes.RATE]: 429,
  [ErrorCodes.LIMIT]: 413,
  [ErrorCodes.CONFIG]: 400,
  [ErrorCodes.DATA]: 400,
  [ErrorCodes.FIELD]: 400,
  [ErrorCodes.DECODE]: 400,
};

const ADAPTER_FILES = ['adapter_model.safetensors', 'adapter_config.json'];

function reply(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return void res.destroy();
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

function replyError(res: ServerResponse, err: unknown, status?: number): void {
  if (err instanceof LoraMeshError) {
    const message = err.message.replace(/^LM_ERR_\w+: /, '');
    return reply(res, status ?? STATUS[err.code] ?? 400, { error: err.code, message });
  }
  reply(res, 500, { error: 'internal', message: (err as Error).message });
}

const sameToken = (given: string | undefined, expected: string) => {
  if (!given) return false;
  const [a, b] = [given, expected].map((t) => createHash('sha256').update(t).digest());
  return timingSafeEqual(a, b);
};

/** Reads a JSON body of at most `limit` bytes. */
async function readJson(req: IncomingMessage, limit: number): Promise<unknown> {
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of req) {
    bytes += (chunk as Buffer).length;
    if (bytes > limit) fail(ErrorCodes.LIMIT, `request body over ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (err) {
    return fail(ErrorCodes.DECODE, `request body is not JSON (${(err as Error).message})`);
  }
}

/** An upload's name as stored: its base name, of safe characters, with a data file extension. */
function uploadName(raw: string | null): string {
  const name = basename(raw ?? '');
  if (!/^[\w.-]{1,100}$/.test(name) || name.startsWith('.'))
    fail(
      ErrorCodes.CONFIG,
      `upload name ${JSON.stringify(raw)}: expected a file name of letters, digits, "_", "-", "."`,
    );
  dataFileFormat(name); // a format train --data reads, else LM_ERR_DATA naming them
  return name;
}

const publicRun = (run: PoolRun) => ({
  id: run.id,
  name: run.name,
  state: run.state,
  step: run.step,
  steps: run.steps,
  weight: run.weight,
  priority: run.priority,
  submittedAt: run.submittedAt,
  finishedAt: run.finishedAt,
  error: run.error,
  config: run.config,
});

/** The API's request handler: true when it answered (a /pool/api/ path), false to let others try. */
export function poolApi(opts: PoolApiOptions): (req: IncomingMessage, res: ServerResponse) => boolean {
  const maxJson = opts.maxJsonBytes ?? 1 << 20;
  const bearer = (req: IncomingMessage) =>
    req.headers.authorization?.startsWith('Bearer ') ? req.headers.authorization.slice(7) : undefined;
  const isAdmin = (req: IncomingMessage) => opts.adminToken !== null && sameToken(bearer(req), opts.adminToken);
  /** the caller: the admin (null tenant, sees all) or a live tenant; else LM_ERR_AUTH */
  const caller = (req: IncomingMessage): { tenant: Tenant | null } => {
    if (isAdmin(req)) return { tenant: null };
    const tenant = opts.registry.authenticate(bearer(req) ?? '');
    if (!tenant) fail(ErrorCodes.AUTH, 'a valid tenant token is needed (Authorization: Bearer <token>)');
    return { tenant };
  };
  const admin = (req: IncomingMessage) => {
    if (!isAdmin(req)) fail(ErrorCodes.AUTH, 'the pool admin token is needed');
  };
  // one request budget per token, taken after the token is checked (an unknown token costs nothing to refuse)
  const rate = opts.requestsPerSecond ?? 50;
  const buckets = new Map<string, TokenBucket>();
  const limit = (who: string) => {
    let bucket = buckets.get(who);
    if (!bucket) buckets.set(who, (bucket = new TokenBucket(rate)));
    if (!bucket.take()) fail(ErrorCodes.RATE, `more than ${rate} requests per second with this token; slow down`);
  };
  const ownRun = (tenant: Tenant | null, id: string) =>
    (tenant === null ? opts.registry.runById(id) : opts.registry.run(tenant.id, id)) ??
    fail(ErrorCodes.NOT_FOUND, `no run ${id.slice(0, 40)}`);

  async function upload(req: IncomingMessage, res: ServerResponse, tenant: Tenant, url: URL): Promise<void> {
    const name = uploadName(url.searchParams.get('name'));
    const declared = Number(req.headers['content-length']);
    if (!Number.isSafeInteger(declared) || declared <= 0)
      return replyError(res, new LoraMeshError(ErrorCodes.LIMIT, 'an upload needs its Content-Length'), 411);
    // refused before a byte is stored
    opts.registry.checkUpload(tenant.id, declared);
    const id = nanoid(10);
    const folder = join(opts.dir, 'uploads', id);
    const path = join(folder, name);
    mkdirSync(folder, { recursive: true });
    const hash = createHash('sha256');
    let bytes = 0;
    try {
      await new Promise<void>((resolve, reject) => {
        const out = createWriteStream(path);
        req.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes > declared) {
            req.destroy();
            out.destroy();
            reject(new LoraMeshError(ErrorCodes.LIMIT, `upload longer than its Content-Length ${declared}`));
            return;
          }
          hash.update(chunk);
          out.write(chunk);
        });
        req.on('end', () => out.end());
        req.on('error', reject);
        req.on('close', () => {
          if (req.complete) return;
          out.destroy();
          reject(new LoraMeshError(ErrorCodes.LIMIT, `upload cut off after ${bytes} bytes`));
        });
        out.on('finish', resolve);
        out.on('error', reject);
      });
      if (bytes !== declared) fail(ErrorCodes.LIMIT, `upload ended after ${bytes} of ${declared} bytes`);
      const sha256 = hash.digest('hex');
      // the same file again (a resubmission): the stored one is reused, nothing new is kept
      const same = opts.registry.findUpload(tenant.id, name, sha256);
      if (same) {
        rmSync(folder, { recursive: true, force: true });
        return reply(res, 200, {
          upload: { id: same.id, name, bytes, sha256, examples: same.examples },
          reused: true,
        });
      }
      let examples: number;
      try {
        examples = await opts.validateUpload(path);
      } catch (err) {
        // errors name the file as the client knows it
        if (err instanceof LoraMeshError)
          throw new LoraMeshError(
            err.code,
            err.message
              .split(path)
              .join(name)
              .replace(/^LM_ERR_\w+: /, ''),
          );
        throw err;
      }
      const stored = opts.registry.addUpload(tenant.id, {
        name,
        sha256,
        bytes,
        examples,
        path: join('uploads', id, name),
      });
      reply(res, 201, { upload: { id: stored.id, name, bytes, sha256: stored.sha256, examples } });
    } catch (err) {
      rmSync(folder, { recursive: true, force: true });
      throw err;
    }
  }

  async function route(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const parts = url.pathname.slice('/pool/api/'.length).split('/').filter(Boolean);
    const method = req.method ?? 'GET';
    if (parts[0] === 'tenants') {
      admin(req);
      limit('admin');
      if (parts.length === 1 && method === 'POST') {
        const body = (await readJson(req, maxJson)) as { name?: unknown; quotas?: unknown };
        const made = opts.registry.createTenant(String(body?.name ?? ''), (body?.quotas ?? {}) as object);
        return reply(res, 201, made);
      }
      if (parts.length === 1 && method === 'GET') return reply(res, 200, { tenants: opts.registry.tenants() });
      if (parts.length === 2 && method === 'DELETE') {
        opts.registry.revokeTenant(parts[1]);
        return reply(res, 200, { revoked: parts[1] });
      }
    }
    const { tenant } = caller(req);
    limit(tenant?.id ?? 'admin');
    if (parts[0] === 'status' && parts.length === 1 && method === 'GET' && opts.monitor)
      return reply(res, 200, opts.monitor.status(tenant?.id ?? null));
    if (parts[0] === 'uploads' && parts.length === 1 && method === 'PUT') {
      if (!tenant) fail(ErrorCodes.CONFIG, 'uploads belong to a tenant: use a tenant token');
      return upload(req, res, tenant, url);
    }
    if (parts[0] === 'runs') {
      if (parts.length === 2 && parts[1] === 'check' && method === 'POST') {
        // a submission checked before its data is uploaded (the CLI asks first)
        checkSubmission(await readJson(req, maxJson), opts.base);
        return reply(res, 200, { ok: true });
      }
      if (parts.length === 1 && method === 'GET')
        return reply(res, 200, { runs: opts.registry.runs(tenant?.id ?? null).map(publicRun) });
      if (parts.length === 1 && method === 'POST') {
        if (!tenant) fail(ErrorCodes.CONFIG, 'runs belong to a tenant: use a tenant token');
        const body = (await readJson(req, maxJson)) as Record<string, unknown>;
        const { uploadId, ...rest } = (typeof body === 'object' && body !== null ? body : {}) as Record<
          string,
          unknown
        >;
        if (typeof uploadId !== 'string') fail(ErrorCodes.CONFIG, 'uploadId: expected the id an upload returned');
        const submission = checkSubmission(rest, opts.base);
        const run = opts.registry.submitRun(tenant.id, {
          name: submission.name,
          config: { run: rest.run },
          uploadId,
          steps: submission.settings.train.steps,
          weight: submission.share.weight,
          priority: submission.share.priority,
        });
        opts.onSubmit?.(run, submission);
        return reply(res, 201, { run: publicRun(run) });
      }
      const run = ownRun(tenant, parts[1] ?? '');
      if (parts.length === 2 && method === 'GET') return reply(res, 200, { run: publicRun(run) });
      if (parts.length === 3 && parts[2] === 'cancel' && method === 'POST') {
        const cancelled = opts.registry.cancel(tenant?.id ?? null, run.id);
        opts.onCancel?.(cancelled);
        return reply(res, 200, { run: publicRun(cancelled) });
      }
      if (parts.length === 4 && parts[2] === 'files' && method === 'GET') {
        if (!ADAPTER_FILES.includes(parts[3]))
          fail(ErrorCodes.NOT_FOUND, `no file ${parts[3].slice(0, 60)}; a run has ${ADAPTER_FILES.join(', ')}`);
        if (run.state !== 'done')
          fail(ErrorCodes.STATE, `run ${run.id} is ${run.state}; its adapter comes when it is done`);
        const path = opts.runFile?.(run, parts[3]) ?? fail(ErrorCodes.NOT_FOUND, `run ${run.id} has no ${parts[3]}`);
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': statSync(path).size });
        createReadStream(path).pipe(res);
        return;
      }
    }
    fail(ErrorCodes.NOT_FOUND, `no route ${method} ${url.pathname.slice(0, 80)}`);
  }

  return (req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (!url.pathname.startsWith('/pool/api/')) return false;
    route(req, res, url).catch((err) => {
      replyError(res, err);
      // an upload refused part-way: stop reading what the client still sends
      if (!req.complete) req.resume();
    });
    return true;
  };
}
