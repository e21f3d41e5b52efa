/**
 * The options every Node WebSocket client of loramesh connects with (workers, relays to their parent, the bench's
 * simulated workers).
 *
 * A zero masking key. RFC 6455 has clients mask each frame with a fresh key, so that a script in a browser cannot
 * shape the bytes a caching proxy sees; a Node process is no such script, and ws skips masking for an all-zero
 * key on both sides (its `generateMask` option). So a result or parameter frame is sent without XOR-ing and
 * copying it into a new buffer, and the coordinator does not unmask it: at Qwen2.5-0.5B shapes (33.6 MiB per
 * result, r=16 on every projection) that is two passes over every frame fewer. Browsers always mask.
 */
import type { ClientOptions } from 'ws';

const zeroMask = (mask: Uint8Array) => {
  mask.fill(0);
};

export const NODE_CLIENT: ClientOptions = {
  // the coordinator's own frame limit decides what it sends; a worker takes whatever its coordinator sends
  maxPayload: 1 << 30,
  perMessageDeflate: false,
  generateMask: zeroMask,
};
