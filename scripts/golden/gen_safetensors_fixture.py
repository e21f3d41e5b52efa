#!/usr/bin/env python3
"""
Writes test/fixtures/safetensors/mixed.safetensors and mixed.expected.json: a safetensors file
made by a writer independent of loramesh's, for test/shared/formats/safetensors.test.ts.

The `safetensors` package is not used (nor needed): the file is written by hand from the format
spec with struct + json. Half-precision rounding is torch's (`.half()`, `.bfloat16()`), so the
TypeScript test checks loramesh's float16/bfloat16 rounding against torch's bit for bit.

Layout, as the reference writer does it: tensors ordered by item size (largest first), then name,
so the data order differs from loramesh's sorted-name order; header JSON padded with spaces to
a multiple of 8 bytes.

Run from the repo root:  /usr/bin/python3 scripts/golden/gen_safetensors_fixture.py
Expected values are stored as hex bit patterns so ±Inf, NaN and -0 survive JSON.
"""
import json
import math
import os
import struct

import torch

OUT_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'test', 'fixtures', 'safetensors')

# Values chosen to hit every branch of a float32 → 16-bit conversion.
SOURCE = [
    0.0, -0.0, 1.0, -2.5, 1.0 / 3.0, 0.1, math.pi,
    65504.0,        # largest finite float16
    65519.0,        # just under the float16 overflow tie: rounds down to 65504
    65520.0,        # float16 overflow tie: rounds (to even) up to Inf
    1e6,            # float16 overflow; ordinary in bfloat16
    2.0 ** -24,     # smallest float16 subnormal
    2.0 ** -25,     # half of it: ties to even, so 0 in float16
    3.0 * 2.0 ** -26,  # 0.75 · 2^-24: rounds up to the smallest subnormal
    1e-5,           # a float16 subnormal
    6.1e-5,         # just under the smallest normal float16 (2^-14 ≈ 6.1035e-5)
    1.0 + 2.0 ** -11,  # float16 tie between 1 and 1+2^-10: to even, 1
    1.0 + 3 * 2.0 ** -11,  # float16 tie: to even, 1 + 2^-9
    1.0 + 2.0 ** -8,   # bfloat16 tie: to even, 1
    3.4e38,         # past the largest bfloat16 finite: Inf in both
    1e-40,          # float32 subnormal: 0 in float16, a subnormal in bfloat16
    float('inf'), float('-inf'), float('nan'),
]
INTS = [0, 1, -1, 2147483647, -2147483648, 123456789]

ITEM_BYTES = {'F32': 4, 'F16': 2, 'BF16': 2, 'I64': 8}


def bits32(t: torch.Tensor) -> list:
    return ['%08x' % (v & 0xFFFFFFFF) for v in t.float().contiguous().view(torch.int32).tolist()]


def bits16(t: torch.Tensor) -> list:
    return ['%04x' % (v & 0xFFFF) for v in t.contiguous().view(torch.int16).tolist()]


def raw_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: go through the bit pattern
        t = t.view(torch.int16)
    return t.numpy().tobytes()  # little-endian on every machine this runs on


def main() -> None:
    source = torch.tensor(SOURCE, dtype=torch.float32)
    tensors = {
        'weights.f32': ('F32', [4, 6], source.clone()),
        'weights.f16': ('F16', [len(SOURCE)], source.half()),
        'weights.bf16': ('BF16', [2, 12], source.bfloat16()),
        'token_ids': ('I64', [len(INTS)], torch.tensor(INTS, dtype=torch.int64)),
    }
    order = sorted(tensors, key=lambda name: (-ITEM_BYTES[tensors[name][0]], name))

    header = {'__metadata__': {'format': 'pt', 'writer': 'scripts/golden/gen_safetensors_fixture.py'}}
    data = b''
    for name in order:
        dtype, shape, t = tensors[name]
        chunk = raw_bytes(t)
        assert len(chunk) == math.prod(shape) * ITEM_BYTES[dtype], name
        header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [len(data), len(data) + len(chunk)]}
        data += chunk
    header_bytes = json.dumps(header, separators=(',', ':')).encode('utf-8')
    header_bytes += b' ' * (-len(header_bytes) % 8)

    expected = {
        'metadata': header['__metadata__'],
        'source_f32_bits': bits32(source),
        'ints': INTS,
        'tensors': {},
    }
    for name in order:
        dtype, shape, t = tensors[name]
        entry = {'dtype': dtype, 'shape': shape, 'data_offsets': header[name]['data_offsets']}
        if dtype == 'I64':
            entry['values'] = t.tolist()
        else:
            entry['decoded_f32_bits'] = bits32(t)  # what a reader must return, exactly
            if dtype != 'F32':
                entry['stored_bits'] = bits16(t)  # torch's rounding of source_f32_bits
        expected['tensors'][name] = entry
    expected['header_length'] = len(header_bytes)
    expected['file_bytes'] = 8 + len(header_bytes) + len(data)

    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, 'mixed.safetensors'), 'wb') as f:
        f.write(struct.pack('<Q', len(header_bytes)))
        f.write(header_bytes)
        f.write(data)
    with open(os.path.join(OUT_DIR, 'mixed.expected.json'), 'w') as f:
        json.dump(expected, f, indent=1)
        f.write('\n')
    print(f'wrote {expected["file_bytes"]} bytes, header {len(header_bytes)} bytes, order {order}')


if __name__ == '__main__':
    main()
