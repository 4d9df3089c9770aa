"""Traditional-codec anchors (paper A.2): JPEG, WebP, AVIF (Pillow), HEIC (pillow-heif) and VTM intra (a binary
the user builds; paper: VTM 17.0, QP 37-49). Each codes an 8-bit RGB image at one quality and returns the bytes
and the decoded image, so the anchors run through the same task pipeline as the Reconstruction baseline."""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, features

PILLOW_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF", "heic": "HEIF"}


def unavailable_reason(name: str, vtm: dict[str, Any] | None = None) -> str | None:
    """None when ``name`` can run here, else why not (printed as the skip message)."""
    if name in ("jpeg", "webp", "avif"):
        feature = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}[name]
        return None if features.check(feature) else f"Pillow was built without {name.upper()} support"
    if name == "heic":
        try:
            import pillow_heif  # noqa: F401
        except ImportError:
            return "pillow-heif is not installed (pip install pillow-heif)"
        return None
    if name == "vtm":
        vtm = vtm or {}
        missing = [k for k in ("encoder", "decoder", "config") if not vtm.get(k) or not Path(vtm[k]).exists()]
        return (
            f"set anchors.vtm.{missing[0]} to your VTM build (EncoderApp, DecoderApp, encoder_intra_vtm.cfg)"
            if missing
            else None
        )
    return f"unknown anchor codec '{name}' (jpeg, webp, avif, heic, vtm)"


def code_image(
    img: Image.Image, name: str, quality: int, vtm: dict[str, Any] | None = None
) -> tuple[bytes, Image.Image]:
    """(bitstream, decoded RGB image) of ``img`` with codec ``name`` at ``quality`` (QP for VTM)."""
    img = img.convert("RGB")
    if name == "vtm":
        return _vtm(img, quality, vtm or {})
    if name == "heic":
        import pillow_heif

        pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    img.save(buf, PILLOW_FORMATS[name], quality=int(quality))
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as dec:
        return data, dec.convert("RGB")


def _vtm(img: Image.Image, qp: int, vtm: dict[str, Any]) -> tuple[bytes, Image.Image]:
    """VTM all-intra: RGB -> 8-bit YUV 4:4:4 (BT.601 full range) -> EncoderApp -> DecoderApp -> RGB.
    Odd sizes are padded to a multiple of 8 by edge replication and cropped back."""
    w, h = img.size
    pw, ph = -(-w // 8) * 8, -(-h // 8) * 8
    rgb = np.pad(np.asarray(img, dtype=np.float64), ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    yuv = rgb @ m.T + [0, 128, 128]
    with tempfile.TemporaryDirectory() as tmp:
        src, bit, rec = Path(tmp) / "in.yuv", Path(tmp) / "out.bin", Path(tmp) / "rec.yuv"
        np.clip(np.rint(yuv), 0, 255).astype(np.uint8).transpose(2, 0, 1).tofile(src)
        common = ["--InputBitDepth=8", "--OutputBitDepth=8", "--InputChromaFormat=444", "--ChromaFormatIDC=444"]
        subprocess.run(
            [
                vtm["encoder"],
                "-c",
                vtm["config"],
                "-i",
                str(src),
                "-b",
                str(bit),
                "-wdt",
                str(pw),
                "-hgt",
                str(ph),
                "-fr",
                "1",
                "-f",
                "1",
                "-q",
                str(qp),
                *common,
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run([vtm["decoder"], "-b", str(bit), "-o", str(rec), "-d", "8"], check=True, capture_output=True)
        data = bit.read_bytes()
        dec = np.fromfile(rec, dtype=np.uint8).reshape(3, ph, pw).transpose(1, 2, 0).astype(np.float64)
    dec = (dec - [0, 128, 128]) @ np.linalg.inv(m).T
    return data, Image.fromarray(np.clip(np.rint(dec), 0, 255).astype(np.uint8)[:h, :w])
