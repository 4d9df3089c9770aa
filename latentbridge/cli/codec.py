"""Encode images to LatentBridge bitstreams and decode them back (files in, files out).

    latentbridge-codec encode --codec codec.pt img1.png img2.jpg -o out/     # out/img1.lbr, out/img2.lbr
    latentbridge-codec decode --codec codec.pt out/img1.lbr -o rec/ [--latent] # rec/img1.png (+ img1.latent.pt)
    latentbridge-codec encode --codec p2/export.pt --rate 0.0009 img.png -o out/  # a variable-rate codec (paper 2)
    latentbridge-codec encode --codec codec.pt img.png -o out/ --send http://server:8000  # the edge of split inference

``--codec`` is a trained codec checkpoint (phase 0's export, e.g. .cache/latentbridge/codecs/mini_s8_lambda*.pt,
or a paper-2 run's export.pt). A variable-rate codec needs ``--rate`` to encode (a lambda inside its ladder, or
``q=<0..1>``); the stream carries its gain, so decoding needs no rate. A paper-2 export also carries the pre-editor,
applied before encoding (``--no-preedit`` skips it; ``--preedit FILE`` takes it from another export of the same
codec).
Every problem with an input file is one line on stderr naming the file; the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms.functional import to_pil_image

from latentbridge.codecs.adapter import load_codec_checkpoint
from latentbridge.codecs.bitstream import MAX_PIXELS, bits_per_pixel_of, decode_latent, encode_image
from latentbridge.codecs.keys import read_key
from latentbridge.core.atomic_io import atomic_write_bytes, read_checkpoint
from latentbridge.core.errors import ConfigError, DataError, LatentBridgeError
from latentbridge.core.images import read_image
from latentbridge.nn.pre_editor import load_editor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentbridge-codec", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["encode", "decode"])
    parser.add_argument("inputs", nargs="+", type=Path)
    parser.add_argument("--codec", required=True, type=Path, help="trained codec checkpoint")
    parser.add_argument("-o", "--output-dir", required=True, type=Path)
    parser.add_argument("--latent", action="store_true", help="decode: also write y_hat (.latent.pt)")
    parser.add_argument("--rate", help="encode with a variable-rate codec: a lambda of its ladder, or q=<0..1>")
    parser.add_argument("--preedit", type=Path, help="encode: the pre-editor of this export (default: the codec's)")
    parser.add_argument("--no-preedit", action="store_true", help="encode: skip the pre-editor")
    parser.add_argument("--key-file", type=Path, help="a shared key: encode signs (HMAC-SHA256), decode checks")
    parser.add_argument("--send", metavar="URL", help="encode: POST each bitstream to a latentbridge-serve server")
    parser.add_argument("--prompt", help="with --send: ask the server's MLLM this (/v1/generate)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images (encode and decode)")
    args = parser.parse_args(argv)
    try:
        key = read_key(args.key_file)
        codec, lmbda = load_codec_checkpoint(args.codec)
        rate, edit = encode_settings(args, codec, lmbda)
        for path in args.inputs:
            if args.command == "encode":
                x = read_image(path, args.max_pixels)
                with torch.no_grad():
                    data = encode_image(codec, edit(x), rate, key=key)
                out = args.output_dir / f"{path.stem}.lbr"
                atomic_write_bytes(out, data)
                bpp = bits_per_pixel_of(data, x.shape[-2], x.shape[-1])
                at = "" if not codec.variable_rate else f", gain {rate:.6g}"
                print(f"{path} -> {out}: {len(data)} bytes, {bpp:.4f} bpp ({x.shape[-1]}x{x.shape[-2]}{at})")
                if args.send:
                    print(f"  {send(args.send, data, args.prompt)}")
            else:
                try:
                    data = path.read_bytes()
                except OSError as e:
                    raise DataError(f"{path}: cannot read ({e.strerror})") from None
                try:
                    y_hat, bs = decode_latent(codec, data, lmbda, max_pixels=args.max_pixels, key=key)
                except LatentBridgeError as e:
                    raise DataError(f"{path}: {e}") from None
                x_hat = codec.synthesize(y_hat)[..., : bs.height, : bs.width]
                out = args.output_dir / f"{path.stem}.png"
                args.output_dir.mkdir(parents=True, exist_ok=True)
                to_pil_image(x_hat[0]).save(out)
                if args.latent:
                    torch.save(y_hat, args.output_dir / f"{path.stem}.latent.pt")
                print(f"{path} -> {out} ({bs.width}x{bs.height}, y_hat {tuple(y_hat.shape[1:])})")
    except LatentBridgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def send(url: str, data: bytes, prompt: str | None = None, timeout: float = 60.0) -> str:
    """POST a bitstream to a server (``latentbridge-serve``): /v1/latent, or /v1/generate with a prompt; one line
    describing the answer. An error status is a one-line error with the server's reason."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    base = url.rstrip("/")
    for tail in ("/v1/latent", "/v1/generate"):
        base = base.removesuffix(tail)
    target = f"{base}/v1/generate?{urllib.parse.urlencode({'prompt': prompt})}" if prompt else f"{base}/v1/latent"
    req = urllib.request.Request(target, data=data, headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body, headers = r.read(), r.headers
    except urllib.error.HTTPError as e:
        reason = e.read().decode(errors="replace")
        try:
            reason = json.loads(reason)["error"]
        except (ValueError, KeyError, TypeError):
            pass
        raise DataError(f"--send: {target}: HTTP {e.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"--send: {target}: {getattr(e, 'reason', e)}") from None
    if prompt:
        answer = json.loads(body)
        return f"{target} -> {answer['answer']!r} ({answer['bytes']} bytes, {answer['bpp']:.4f} bpp)"
    return (
        f"{target} -> features {headers['X-LatentBridge-Shape']} ({len(body)} bytes back; the server read "
        f"{headers['X-LatentBridge-Bytes']} bytes, {float(headers['X-LatentBridge-Bpp']):.4f} bpp)"
    )


def encode_settings(args: argparse.Namespace, codec: Any, lmbda: float | None) -> tuple[float | None, Callable]:
    """The header rate (lambda or gain) and the edge function of an ``encode``; bad flags are one-line errors."""
    if args.command != "encode":
        if args.rate is not None or args.preedit is not None:
            raise ConfigError("--rate / --preedit: decoding reads the rate from the bitstream; they are for encode")
        return lmbda, lambda x: x
    if not codec.variable_rate:
        if args.rate is not None or args.preedit is not None:
            raise ConfigError(f"--rate / --preedit: {args.codec} is a fixed-rate codec (lambda={lmbda})")
        return lmbda, lambda x: x
    if args.rate is None:
        lo, hi = codec.ladder.lmbda_min, codec.ladder.lmbda_max
        raise ConfigError(
            f"--rate: {args.codec} is a variable-rate codec; give a lambda in [{lo:g}, {hi:g}] or q=<0..1>"
        )
    try:
        q = codec.ladder.resolve(args.rate)
    except ConfigError as e:
        raise ConfigError(f"--rate: {str(e).removeprefix('rates: ')}") from None
    editor = None
    if not args.no_preedit:
        source = args.preedit or args.codec
        obj = read_checkpoint(source, "--preedit")
        if args.preedit is not None or (isinstance(obj, dict) and "editor" in obj):
            editor = load_editor(obj.get("editor", obj) if isinstance(obj, dict) else obj, codec, str(source))
    return codec.ladder.gain(q), (lambda x: x) if editor is None else (lambda x: editor(x, q))


if __name__ == "__main__":
    sys.exit(main())
