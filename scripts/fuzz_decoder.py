"""Fuzz the bitstream decoder with hostile input (issue: split inference as a service).

    python scripts/fuzz_decoder.py [--cases 10000] [--max-pixels 16384] [--seed 0] [--json out.json]

Random-init mini codecs (fixed-rate, variable-rate, the mini TCM) decode, through ``decode_latent`` as a server would,
streams made to hurt it: forged headers with valid checksums (image sizes, string tables, string lengths, codec
ids, config hashes, versions, rates / gains including NaN and inf), well-formed streams whose entropy-coded strings
are random bytes, and random mutations of real streams (bit flips, insertions, deletions, truncations; the
checksum fixed most of the time). Each case must end in a decode or a one-line ``BitstreamError``; anything else
is counted as a failure. Prints the counts by outcome, the slowest case and the peak memory; run it in a process
of its own (a crash of the decoder is the process's death, which the caller sees).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import re
import resource
import struct
import sys
import time
import zlib

import torch

from latentbridge.codecs import bitstream as B
from latentbridge.codecs.adapter import build_codec


def with_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def header(codec_id: int, config_hash: bytes, rate: float, h: int, w: int, version: int = B.VERSION) -> bytes:
    return struct.pack(">2sBB4sfHH", B.MAGIC, version, codec_id, config_hash, rate, h, w)


def table(groups: list[list[int]]) -> bytes:
    return bytes([len(groups)]) + b"".join(bytes([len(g)]) + b"".join(B._varint(n) for n in g) for g in groups)


class Cases:
    """Generators of hostile streams for one codec, from one real stream of it."""

    def __init__(self, codec, rate, rng: random.Random, max_side: int) -> None:  # noqa: ANN001
        self.codec, self.rng, self.max_side = codec, rng, max_side
        x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        self.real = B.encode_image(codec, x, rate)
        bs = B.Bitstream.from_bytes(self.real)
        self.id, self.hash, self.rate = bs.codec_id, bs.config_hash, bs.lmbda
        self.layout = [len(g) for g in bs.strings]

    def rates(self) -> float:
        r = self.rng
        return r.choice([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e-45, 3.4e38, self.rate, r.uniform(-10, 10)])

    def size(self) -> tuple[int, int]:
        r = self.rng
        return r.choice(
            [
                (r.randrange(0, 65536), r.randrange(0, 65536)),
                (4096, 4096),
                (65535, 65535),
                (r.randrange(1, self.max_side + 1), r.randrange(1, self.max_side + 1)),
                (0, r.randrange(1, 64)),
            ]
        )

    def strings(self, n: int) -> list[bytes]:
        r = self.rng
        pick = r.randrange(4)
        if pick == 0:
            return [b""] * n
        if pick == 1:
            return [bytes([r.choice([0, 255])]) * (4 * r.randrange(0, 64)) for _ in range(n)]
        return [r.randbytes(r.choice([0, 3, 4, 8, 12, 64, 4 * r.randrange(2, 2048)])) for _ in range(n)]

    def forged_header(self) -> bytes:
        """Valid checksum, hostile fields: size, rate, id, hash, version, table and lengths."""
        r = self.rng
        h, w = self.size()
        cid = self.id if r.random() < 0.7 else r.randrange(256)
        chash = self.hash if r.random() < 0.7 else r.randbytes(4)
        rate = self.rate if r.random() < 0.5 else self.rates()
        version = B.VERSION if r.random() < 0.9 else r.randrange(256)
        if r.random() < 0.5:  # the codec's structure
            groups = [self.strings(1) for _ in self.layout]
        else:  # any structure: hundreds of "entropy models", empty groups, many strings
            groups = [self.strings(r.randrange(0, 4)) for _ in range(r.choice([0, 1, 3, 17, 255]))]
        lengths = [[len(s) for s in g] for g in groups]
        payload = b"".join(s for g in groups for s in g)
        if r.random() < 0.2:  # lengths that lie about the payload
            lengths = [[r.choice([0, 1, 2**20, 2**34, n + 1]) for n in g] for g in lengths]
        body = header(cid, chash, rate, h, w, version) + table(lengths) + payload
        if r.random() < 0.05:  # an over-long varint
            body = header(cid, chash, rate, h, w, version) + bytes([1, 1]) + b"\xff" * 8 + b"\x01"
        return with_crc(body)

    def random_strings(self) -> bytes:
        """A well-formed stream of this codec (right id, hash, rate, table) whose strings are random bytes: the
        entropy decoder runs on garbage."""
        r = self.rng
        h, w = r.randrange(1, self.max_side + 1), r.randrange(1, self.max_side + 1)
        groups = [[r.randbytes(4 * r.randrange(2, 512))] for _ in self.layout]
        return B.Bitstream(self.id, self.hash, self.rate, h, w, groups).to_bytes()

    def mutated(self) -> bytes:
        """A real stream, mutated; the checksum fixed 90% of the time."""
        r = self.rng
        data = bytearray(self.real)
        for _ in range(r.randrange(1, 8)):
            op = r.randrange(4)
            if op == 0 and data:
                i = r.randrange(len(data))
                data[i] ^= 1 << r.randrange(8)
            elif op == 1:
                i = r.randrange(len(data) + 1)
                data[i:i] = r.randbytes(r.randrange(1, 16))
            elif op == 2 and data:
                i = r.randrange(len(data))
                del data[i : i + r.randrange(1, 16)]
            else:
                data = data[: r.randrange(len(data) + 1)]
        if r.random() < 0.9 and len(data) > 4:
            return with_crc(bytes(data[:-4]))
        return bytes(data)

    def next(self) -> tuple[str, bytes]:
        kind = self.rng.choices(["forged_header", "random_strings", "mutated"], weights=[5, 2, 3])[0]
        return kind, getattr(self, kind)()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--max-pixels", type=int, default=128 * 128, help="the decoder's limit (cost of a decode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the counts here")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    codecs = []
    for name, rate in (("mini", 0.0018), ("mini-vbr", None), ("mini-tcm", 0.0018)):
        codec = build_codec(name, lmbda=rate).eval()
        codec.model.update(force=True)
        gain = codec.ladder.gain(0.5) if codec.variable_rate else rate
        codecs.append((codec, rate, Cases(codec, gain, rng, int(math.isqrt(args.max_pixels)))))
    outcomes: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    failures, slowest = [], (0.0, "")
    for i in range(args.cases):
        codec, lmbda, cases = codecs[i % len(codecs)]
        kind, data = cases.next()
        kinds[kind] += 1
        started = time.perf_counter()
        try:
            B.decode_latent(codec, data, lmbda, max_pixels=args.max_pixels)
            outcome = "decoded"
        except B.BitstreamError as e:
            text = str(e)
            outcome = "error: " + re.sub(r"'[^']*'|[-+]?(\d[\d.]*(e[-+]?\d+)?|nan|inf)", "#", text.split(" (")[0])[:70]
            if "\n" in text:
                failures.append((i, kind, "multi-line error", text[:200]))
        except Exception as e:  # a traceback a server would leak: a failure of the hardening
            outcome = f"FAILURE {type(e).__name__}"
            failures.append((i, kind, type(e).__name__, str(e)[:200]))
        seconds = time.perf_counter() - started
        slowest = max(slowest, (seconds, f"case {i} ({kind}, {len(data)} bytes)"))
        outcomes[outcome] += 1
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "cases": args.cases,
        "max_pixels": args.max_pixels,
        "kinds": dict(kinds),
        "outcomes": dict(outcomes.most_common()),
        "failures": failures[:20],
        "slowest_s": round(slowest[0], 4),
        "slowest": slowest[1],
        "peak_rss_mb": round(peak_mb),
    }
    print(
        f"{args.cases} hostile cases ({', '.join(f'{k} {v}' for k, v in kinds.items())}), max_pixels={args.max_pixels}"
    )
    for outcome, n in outcomes.most_common():
        print(f"  {n:6d}  {outcome}")
    print(
        f"failures: {len(failures)}; slowest case {slowest[0] * 1000:.1f} ms ({slowest[1]}); peak RSS {peak_mb:.0f} MB"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
