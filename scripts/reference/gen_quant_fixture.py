"""Reference fixture for loramesh's base-weight formats (shared/quant/formats.ts, quantize.ts), from an
independent implementation: its own NF4 table, its own packing, and exact rational arithmetic
(fractions.Fraction) with one explicit round-to-nearest-even to float32, instead of the float64
operations + Math.fround the TypeScript uses. Agreement bit for bit therefore also checks the
TypeScript's claim that those float64 steps give the correctly rounded float32 results.

Rerun: /usr/bin/python3 scripts/reference/gen_quant_fixture.py   (standard library only)
Writes test/fixtures/quant/formats.json; test/shared/quant/fixture.test.ts quantizes the same
inputs and asserts the packed bytes, scales, double-quantization fields, byte counts and
dequantized values equal these bit for bit. Output is deterministic (integer PRNG, no libm):
rerunning rewrites the identical file.

Formats (the same definitions as the header of shared/quant/formats.ts, written independently):
  fl32(q) = q rounded to the nearest float32, ties to even (subnormals kept, overflow = inf)
  int8  per row, blocks of B columns (last padded): scale = fl32(absmax / 127),
        code = clamp(round_half_even(w / scale), -127, 127) (all 0 if scale == 0), w' = fl32(code * scale)
  nf4   per row, blocks of B: s = absmax (or its double-quantized reconstruction),
        code = index of the level nearest fl32(w / s), ties to the lower index (7 for all if s == 0),
        w' = fl32(L[code] * s); two codes per byte, even element in the high nibble
  nf4 double quantization: offset = fl32(float64 running sum of absmax / count),
        c = fl32(absmax - offset), int8 as above over blocks of D consecutive c,
        s = fl32(fl32(code2 * scale2) + offset); the 4-bit codes are chosen against s
  f16   IEEE binary16 by struct's 'e' format (round half even); bf16 nearest by exact comparison
Signs of zero follow IEEE: a product or quotient's zero has the XOR of the signs; x - x is +0.
"""
import json
import math
import os
import struct
from fractions import Fraction

GENERATOR = "scripts/reference/gen_quant_fixture.py"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "test", "fixtures", "quant")
ROWS, COLS = 5, 150

# NF4 levels as printed in QLoRA (arXiv:2305.14314) appendix E and bitsandbytes' get_4bit_type("nf4").
NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]


# ---- float32 as exact rationals -------------------------------------------------------------------------

def signbit(x):
    return math.copysign(1.0, x) < 0


def fl32(q, negative_zero=False):
    """The float32 nearest the exact rational q (ties to even) as a Python float; inf past the range.
    A result of zero is -0.0 when q < 0 (underflow keeps the sign) or when q == 0 and negative_zero."""
    q = Fraction(q)
    if q == 0:
        return -0.0 if negative_zero else 0.0
    sign = -1 if q < 0 else 1
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    assert Fraction(2) ** e <= a < Fraction(2) ** (e + 1)
    quantum = Fraction(2) ** (max(e, -126) - 23)  # float32 spacing at this magnitude (subnormals: 2^-149)
    n = round(a / quantum)  # Fraction.__round__: half to even
    value = n * quantum
    if value >= Fraction(2) ** 128:
        return sign * math.inf
    if n == 0:
        return math.copysign(0.0, sign)
    return sign * float(value)  # at most 24 significant bits: exact as a Python float


def is_f32(x):
    return math.isinf(x) or fl32(x, signbit(x)) == x


def mul(a, b):
    if math.isinf(a) or math.isinf(b):
        raise ValueError("no infinities expected in a product")
    return fl32(Fraction(a) * Fraction(b), signbit(a) != signbit(b))


def div(a, b):
    assert b != 0
    return fl32(Fraction(a) / Fraction(b), signbit(a) != signbit(b))


def add(a, b):
    # round to nearest: an exact zero sum is -0 only when both addends are -0
    return fl32(Fraction(a) + Fraction(b), signbit(a) and signbit(b))


def sub(a, b):
    return add(a, -b)


def bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def from_bits(b):
    return struct.unpack("<f", struct.pack("<I", b))[0]


def hex32(x):
    return "%08x" % bits(x)


# ---- the formats ----------------------------------------------------------------------------------------

def round_half_even(q):
    return round(Fraction(q))


def int8_block(values):
    """(scale, codes) of one symmetric int8 block."""
    absmax = max(abs(v) for v in values)
    scale = fl32(Fraction(absmax) / 127)
    if scale == 0:
        return scale, [0] * len(values)
    return scale, [max(-127, min(127, round_half_even(Fraction(v) / Fraction(scale)))) for v in values]


def nf4_code(n):
    if math.isinf(n):
        return 15 if n > 0 else 0
    best, best_dist = 0, None
    for i, level in enumerate(NF4):  # ascending, so a strict < keeps the lower index on a tie
        dist = abs(Fraction(n) - Fraction(level))
        if best_dist is None or dist < best_dist:
            best, best_dist = i, dist
    return best


def blocks_of(row, block):
    per_row = -(-len(row) // block)
    return [row[j * block:(j + 1) * block] for j in range(per_row)]


def quantize_int8(matrix, block):
    data, codes, scales, deq = bytearray(), [], [], []
    for row in matrix:
        for blk in blocks_of(row, block):
            scale, c = int8_block(blk)
            scales.append(scale)
            padded = c + [0] * (block - len(c))
            codes += padded
            data += bytes(x & 0xFF for x in padded)
            deq += [mul(float(x), scale) for x in c]
    return {"data": data, "codes": codes, "scales": scales, "dequantized": deq}


def double_quantize(absmax, group):
    total = 0.0
    for a in absmax:
        total += a  # float64, in order: the spec's running sum
    offset = fl32(Fraction(total / len(absmax)))
    centered = [sub(a, offset) for a in absmax]
    codes2, scales2 = [], []
    for g in range(0, len(centered), group):
        scale, c = int8_block(centered[g:g + group])
        scales2.append(scale)
        codes2 += c
    restored = [add(mul(float(codes2[b]), scales2[b // group]), offset) for b in range(len(absmax))]
    padded = codes2 + [0] * (-len(codes2) % 4)
    return {"codes": bytes(x & 0xFF for x in padded), "scales": scales2, "offset": offset}, restored


def quantize_nf4(matrix, block, dq_group=None):
    blocks = [blk for row in matrix for blk in blocks_of(row, block)]
    absmax = [max(abs(v) for v in blk) for blk in blocks]
    dq, scale_used = (None, absmax) if dq_group is None else double_quantize(absmax, dq_group)
    codes, deq = [], []
    for blk, s in zip(blocks, scale_used):
        c = [7 if s == 0 else nf4_code(div(w, s)) for w in blk]
        deq += [mul(NF4[x], s) for x in c]
        codes += c + [7] * (block - len(c))
    data = bytes((codes[2 * i] << 4) | codes[2 * i + 1] for i in range(len(codes) // 2))
    out = {"data": data, "codes": codes, "scales": [] if dq else absmax, "dequantized": deq}
    if dq:
        out["doubleQuant"] = dq
    return out


def bf16_pattern(x):
    """The bfloat16 pattern nearest the float32 x (ties to the even pattern), found by comparing the two
    candidates exactly. Past the largest finite bfloat16 the next candidate counts as 2^128, as IEEE
    rounding does; landing on it is an overflow."""
    low = bits(x) >> 16  # the candidate nearer zero (patterns are sign-magnitude)

    def value(p):
        magnitude = Fraction(2) ** 128 if (p & 0x7FFF) == 0x7F80 else abs(Fraction(from_bits((p & 0x7FFF) << 16)))
        return -magnitude if p & 0x8000 else magnitude

    d_low, d_high = abs(Fraction(x) - value(low)), abs(Fraction(x) - value(low + 1))
    chosen = low if d_low < d_high or (d_low == d_high and low % 2 == 0) else low + 1
    if (chosen & 0x7FFF) >= 0x7F80:
        raise OverflowError("%r overflows bfloat16" % x)
    return chosen


def quantize_half(matrix, fmt):
    flat = [v for row in matrix for v in row]
    if fmt == "f16":
        data = b"".join(struct.pack("<e", v) for v in flat)
        deq = [struct.unpack("<e", data[2 * i:2 * i + 2])[0] for i in range(len(flat))]
    else:
        patterns = [bf16_pattern(v) for v in flat]
        data = b"".join(struct.pack("<H", p) for p in patterns)
        deq = [from_bits(p << 16) for p in patterns]
    data += b"\0" * (-len(data) % 4)
    return {"data": data, "scales": [], "dequantized": deq}


def quantize_f32(matrix):
    flat = [v for row in matrix for v in row]
    return {"data": b"".join(struct.pack("<f", v) for v in flat), "scales": [], "dequantized": flat}


# ---- the input matrix -----------------------------------------------------------------------------------

class Rng:
    """xorshift64*: integers only, so the inputs are the same on every platform."""

    def __init__(self, seed):
        self.state = seed

    def u32(self):
        x = self.state
        x ^= x >> 12
        x ^= (x << 25) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 27
        self.state = x
        return ((x * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF) >> 32

    def uniform(self):
        return Fraction(self.u32(), 2 ** 32)

    def normalish(self, sigma):
        """Irwin–Hall (sum of 4 uniforms, centred), exact, then rounded to float32."""
        return fl32((sum(self.uniform() for _ in range(4)) - 2) * Fraction(sigma))


def next_f32(x, direction):
    """The float32 neighbour of a positive float32 x, up (+1) or down (-1)."""
    return from_bits(bits(x) + direction)


def build_matrix():
    rng = Rng(0x9E3779B97F4A7C15)
    m = [[rng.normalish(Fraction(3, 10)) for _ in range(COLS)] for _ in range(ROWS)]

    # Row 0, columns 0-63: int8 ties. absmax 127/128 in each 32-column half gives scale = 2^-7 exactly,
    # so (k + 1/2) * 2^-7 sits exactly halfway between two codes (both signs).
    for half in (0, 32):
        m[0][half] = Fraction(127, 128)
        m[0][half + 1] = -Fraction(127, 128)
        for i, k in enumerate([0, 1, 2, 3, 125, 126, -1, -2, -3, -4, -126, 40, 41]):
            m[0][half + 2 + i] = Fraction(2 * k + 1, 256)
        for i in range(15, 32):
            m[0][half + i] = Fraction(rng.u32() % 255 - 127, 128)  # exact codes
    # Row 0, columns 64-127: NF4 ties. absmax 2 in every 16-column block gives w / absmax = m exactly for
    # w = 2m, and six NF4 midpoints are float32: those values tie; their float32 neighbours do not.
    exact_midpoints = [mid for mid in ((NF4[i] + NF4[i + 1]) / 2 for i in range(15)) if is_f32(mid)]
    assert len(exact_midpoints) == 6
    for start in (64, 80, 96, 112):
        m[0][start] = Fraction(2) if start % 32 == 0 else Fraction(-2)
    for i, mid in enumerate(exact_midpoints):
        w = 2 * mid
        m[0][65 + i] = w
        m[0][81 + i] = next_f32(abs(w), 1) * (1 if w > 0 else -1)
        m[0][97 + i] = next_f32(abs(w), -1) * (1 if w > 0 else -1)
        m[0][113 + i] = -w

    # Row 1: an all-zero block (with negative zeros) in columns 0-63, weight-like values after.
    for c in range(64):
        m[1][c] = -0.0 if c % 3 == 0 else 0.0
    for c in range(64, COLS):
        m[1][c] = rng.normalish(Fraction(1, 20))
    m[1][100] = Fraction(1, 10)

    # Row 2: tiny, subnormal, huge and wide-ranging magnitudes.
    for c in range(32):
        m[2][c] = rng.normalish(Fraction(1, 10 ** 30))
    for c in range(32, 64):
        m[2][c] = Fraction(int(rng.u32() % 2001) - 1000, 2 ** 149)  # float32 subnormals
    m[2][33], m[2][34], m[2][35] = Fraction(1000, 2 ** 149), Fraction(-1, 2 ** 149), Fraction(1, 2 ** 149)
    for c in range(64, 128):
        m[2][c] = rng.normalish(Fraction(10 ** 30)) if c % 4 else Fraction(1, 2)
    m[2][70], m[2][100] = Fraction(3 * 10 ** 38), -Fraction(3 * 10 ** 38)
    for c in range(128, COLS):
        m[2][c] = rng.normalish(Fraction(10) ** (int(rng.u32() % 41) - 20))

    # Row 3: weight-like with outliers. Row 4: unit scale, then an all-zero (partial) last block.
    for c in range(COLS):
        m[3][c] = rng.normalish(Fraction(1, 50))
    m[3][77], m[3][140] = Fraction(1, 2), Fraction(-9, 10)
    for c in range(COLS):
        m[4][c] = rng.normalish(1) if c < 128 else 0.0
    # Row 4, columns 0-63: absmax 3 in every 16 columns, and w = fl32(3m) and its neighbours for the six
    # float32 midpoints m: fl32(w / 3) can land exactly on m where w / 3 itself does not, which tells the
    # spec's float32 ratio apart from an exact one (main() checks that some value does).
    for start in (0, 16, 32, 48):
        m[4][start] = Fraction(3) if start % 32 == 0 else Fraction(-3)
    for i, mid in enumerate(exact_midpoints):
        w = fl32(3 * Fraction(mid))
        m[4][1 + i], m[4][17 + i], m[4][33 + i] = w, next_f32(abs(w), 1) * (1 if w > 0 else -1), -w
        m[4][49 + i] = next_f32(abs(w), -1) * (1 if w > 0 else -1)

    matrix = [[v if isinstance(v, float) else fl32(v) for v in row] for row in m]
    for row in matrix:
        assert all(is_f32(v) and not math.isinf(v) for v in row)
    # f16 cannot hold the huge values: the f16 input swaps them for its range's edges.
    half = [row[:] for row in matrix]
    half[2] = [v if abs(v) <= 65504 else math.copysign(65504.0, v) for v in half[2]]
    half[2][70] = fl32(Fraction(6551999, 100))  # 65519.99: just under the f16 overflow threshold 65520
    # Double quantization centres the block absmax values on their mean, which row 2's huge blocks
    # dominate (every other block's scale then collapses: a case of its own); the moderate input keeps
    # row 2's tiny blocks but gives the rest of the row unit scale.
    moderate = [row[:] for row in matrix]
    moderate[2][64:] = [rng.normalish(1) for _ in range(64, COLS)]
    return {"main": matrix, "f16": half, "moderate": moderate}


# ---- output ---------------------------------------------------------------------------------------------

CASES = [
    ("f32", {"format": "f32"}, "main"),
    ("f16", {"format": "f16"}, "f16"),
    ("bf16", {"format": "bf16"}, "main"),
    ("int8/64", {"format": "int8"}, "main"),
    ("int8/32", {"format": "int8", "blockSize": 32}, "main"),
    ("nf4/64", {"format": "nf4"}, "main"),
    ("nf4/32", {"format": "nf4", "blockSize": 32}, "main"),
    ("nf4/64+dq256", {"format": "nf4", "doubleQuant": True}, "main"),
    ("nf4/64+dq4", {"format": "nf4", "doubleQuant": True, "doubleQuantBlockSize": 4}, "moderate"),
    ("nf4/16+dq8", {"format": "nf4", "blockSize": 16, "doubleQuant": True, "doubleQuantBlockSize": 8}, "moderate"),
    ("nf4/64 moderate", {"format": "nf4"}, "moderate"),
]


def run_case(spec, matrix):
    fmt = spec["format"]
    if fmt == "f32":
        return quantize_f32(matrix)
    if fmt in ("f16", "bf16"):
        return quantize_half(matrix, fmt)
    block = spec.get("blockSize", 64)
    if fmt == "int8":
        return quantize_int8(matrix, block)
    return quantize_nf4(matrix, block, spec.get("doubleQuantBlockSize", 256) if spec.get("doubleQuant") else None)


def exact_nf4_code(w, s):
    """The level nearest the exact ratio w / s (ties lower): what the spec does not do."""
    q = Fraction(w) / Fraction(s)
    return min(range(16), key=lambda i: (abs(q - Fraction(NF4[i])), i))


def main():
    inputs = build_matrix()
    # The fixture must tell the float32 ratio fl32(w / absmax) apart from the exact one.
    differ = 0
    for row in inputs["main"]:
        for blk in blocks_of(row, 64):
            a = max(abs(v) for v in blk)
            differ += sum(1 for w in blk if a and nf4_code(div(w, a)) != exact_nf4_code(w, a))
    assert differ > 0, "no value where fl32(w / absmax) and w / absmax pick different NF4 levels"
    cases = []
    for name, spec, which in CASES:
        r = run_case(spec, inputs[which])
        assert len(r["dequantized"]) == ROWS * COLS and len(r["data"]) % 4 == 0
        dq = r.get("doubleQuant")
        dq_bytes = len(dq["codes"]) + 4 * len(dq["scales"]) + 4 if dq else 0
        packed_bytes = len(r["data"]) + 4 * len(r["scales"]) + dq_bytes
        case = {
            "name": name,
            "spec": spec,
            "input": which,
            "packedBytes": packed_bytes,
            "data": r["data"].hex(),
            "scales": [hex32(s) for s in r["scales"]],
            "dequantized": [hex32(v) for v in r["dequantized"]],
        }
        if "codes" in r:
            case["codes"] = r["codes"]
        if dq:
            case["doubleQuant"] = {
                "codes": dq["codes"].hex(),
                "scales": [hex32(s) for s in dq["scales"]],
                "offset": hex32(dq["offset"]),
            }
        cases.append(case)
    fixture = {
        "about": "inputs, packed bytes (hex), float32 bit patterns (hex) of scales and dequantized values; "
                 "see " + GENERATOR,
        "generator": GENERATOR,
        "rows": ROWS,
        "cols": COLS,
        "nf4Levels": [hex32(x) for x in NF4],
        "inputs": {k: [hex32(v) for row in m for v in row] for k, m in inputs.items()},
        "cases": cases,
    }
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "formats.json")
    with open(path, "w") as f:
        # one key per line, arrays on one line each: small diffs when a case changes
        f.write("{\n")
        items = list(fixture.items())
        for i, (k, v) in enumerate(items):
            if k == "cases":
                f.write('  "cases": [\n')
                f.write(",\n".join("    " + json.dumps(c, separators=(",", ":")) for c in v))
                f.write("\n  ]")
            else:
                f.write("  %s: %s" % (json.dumps(k), json.dumps(v, separators=(",", ":"))))
            f.write(",\n" if i < len(items) - 1 else "\n")
        f.write("}\n")
    print("wrote", os.path.relpath(path), "with", len(cases), "cases")


if __name__ == "__main__":
    main()
