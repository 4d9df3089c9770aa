"""Encode images to LatentBridge bitstreams and decode them back (files in, files out).

    latentbridge-codec encode --codec codec.pt img1.png img2.jpg -o out/     # out/img1.lbr, out/img2.lbr
    latentbridge-codec decode --codec codec.pt out/img1.lbr -o rec/ [--latent] # rec/img1.png (+ img1.latent.pt)

``--codec`` is a trained codec checkpoint (phase 0's export, e.g. .cache/latentbridge/codecs/mini_lambda*.pt).
Every problem with an input file is one line on stderr naming the file; the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.transforms.functional import to_pil_image

from latentbridge.codecs.adapter import load_codec_checkpoint
from latentbridge.codecs.bitstream import bits_per_pixel_of, decode_latent, encode_image
from latentbridge.core.atomic_io import atomic_write_bytes
from latentbridge.core.errors import DataError, LatentBridgeError
from latentbridge.core.images import read_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentbridge-codec", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["encode", "decode"])
    parser.add_argument("inputs", nargs="+", type=Path)
    parser.add_argument("--codec", required=True, type=Path, help="trained codec checkpoint")
    parser.add_argument("-o", "--output-dir", required=True, type=Path)
    parser.add_argument("--latent", action="store_true", help="decode: also write y_hat (.latent.pt)")
    args = parser.parse_args(argv)
    try:
        codec, lmbda = load_codec_checkpoint(args.codec)
        for path in args.inputs:
            if args.command == "encode":
                x = read_image(path)
                data = encode_image(codec, x, lmbda)
                out = args.output_dir / f"{path.stem}.lbr"
                atomic_write_bytes(out, data)
                bpp = bits_per_pixel_of(data, x.shape[-2], x.shape[-1])
                print(f"{path} -> {out}: {len(data)} bytes, {bpp:.4f} bpp ({x.shape[-1]}x{x.shape[-2]})")
            else:
                try:
                    data = path.read_bytes()
                except OSError as e:
                    raise DataError(f"{path}: cannot read ({e.strerror})") from None
                try:
                    y_hat, bs = decode_latent(codec, data, lmbda)
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


if __name__ == "__main__":
    sys.exit(main())
