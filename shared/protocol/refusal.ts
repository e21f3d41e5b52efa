/**
 * Which of a coordinator's refusals cannot change on retry, and how to say them in words. A worker
 * (Node or browser) retries transient failures (network errors, 1006 closes, 503 LM_ERR_LIMIT,
 * LM_ERR_RATE) with backoff, but a wrong token, a forbidden origin, another protocol version, a
 * missing codec or arithmetic variant, or a quarantine would be refused the same way forever: it stops and says why.
 * Platform-neutral: no sockets here, only the status, codes and text a socket reported.
 */
import { closeCodeFor, ErrorCodes, type ErrorCode } from '../errors.ts';
import { cleanPeerText } from './peer-text.ts';

/** A refusal that retrying cannot change: the code and a sentence for the person running the worker. */
export interface Refusal {
  code: ErrorCode;
  reason: string;
}

/** Longest peer-supplied text kept in a reason (it is shown on a page and in a log line). */
export const MAX_PEER_TEXT = 300;

/**
 * What each permanent code means. `how` is how it arrived, e.g. ' (HTTP 401)' or '' for a reject
 * frame; `detail` is the coordinator's own explanation, '' when it gave none. The code itself is not
 * repeated: LoraMeshError and the join page put it in front.
 */
const PERMANENT: Partial<Record<ErrorCode, (how: string, detail: string) => string>> = {
  [ErrorCodes.AUTH]: (how) =>
    `the coordinator refused the join token${how}: check --token or LORAMESH_TOKEN (or #token= of the join link)`,
  [ErrorCodes.ORIGIN]: (how) =>
    `the coordinator does not accept this worker's origin${how}: add it to the coordinator's --allowed-origins`,
  [ErrorCodes.PROTOCOL_VERSION]: (how, detail) =>
    `the coordinator speaks another protocol version${how}${detail ? ` (${detail})` : ''}: update loramesh`,
  [ErrorCodes.CODEC]: (how, detail) =>
    `this worker lacks the run's wire codec or base format${how}${detail ? ` (${detail})` : ''}: update loramesh`,
  [ErrorCodes.ARITHMETIC]: (how, detail) =>
    `this worker cannot compute with the run's arithmetic variant${how}${detail ? ` (${detail})` : ''}: ` +
    'relaxed-fma needs WebAssembly relaxed SIMD (Chrome 114+, or a Node worker of a loramesh that enables it)',
  [ErrorCodes.QUARANTINED]: (how, detail) =>
    `this worker was quarantined by the coordinator${how}: ${detail || 'no reason given'}`,
  [ErrorCodes.MEMORY]: (how, detail) =>
    `this worker cannot hold the run's model and micro-batches${how}: ${detail || 'no detail given'}`,
  [ErrorCodes.SPOT_CHECK]: (how, detail) =>
    `this worker failed the coordinator's spot check and is barred from the run${how}: ${detail || 'no detail given'}`,
};

/** True for the codes retrying cannot change. */
export const isPermanentCode = (code: string): code is ErrorCode => Object.hasOwn(PERMANENT, code);

/** Close codes a coordinator refuses with: those closeCodeFor gives the permanent codes (1002, 1008). */
const REFUSING_CLOSE_CODES = new Set<number>(Object.keys(PERMANENT).filter(isPermanentCode).map(closeCodeFor));

const permanentCode = (code: string | undefined): ErrorCode | null =>
  code !== undefined && isPermanentCode(code) ? code : null;

/**
 * A refused WebSocket upgrade (Node sees the HTTP status and the X-Loramesh-Error header): 401 and
 * 403 are permanent whatever the header says; any other status is permanent only when the header
 * names a permanent code. 503 LM_ERR_LIMIT and the rest are transient (null).
 */
export function refusalFromHttp(status: number, errorHeader: string | undefined): Refusal | null {
  const code =
    permanentCode(errorHeader?.trim()) ??
    (status === 401 ? ErrorCodes.AUTH : status === 403 ? ErrorCodes.ORIGIN : null);
  return code && { code, reason: PERMANENT[code]!(` (HTTP ${status})`, '') };
}

/** A close frame whose reason is a permanent code (coordinators put the code in the reason), else null. */
export function refusalFromClose(closeCode: number, reason: string): Refusal | null {
  const code = REFUSING_CLOSE_CODES.has(closeCode) ? permanentCode(reason.trim()) : null;
  return code && { code, reason: PERMANENT[code]!(` (close ${closeCode})`, '') };
}

/** A reject frame with a permanent code, keeping the coordinator's (cleaned) explanation; else null. */
export function refusalFromReject(code: string, message: string): Refusal | null {
  const permanent = permanentCode(code);
  const detail = cleanPeerText(message, MAX_PEER_TEXT).trim();
  return permanent && { code: permanent, reason: PERMANENT[permanent]!('', detail) };
}
