"""Traditional-codec anchors (paper A.2) evaluated like the Reconstruction baseline: each image coded to bytes
by JPEG / WebP / AVIF / HEIC / VTM at one quality, decoded, and read by the trained run's vision encoder
(``latentbridge.routes.decoded_image``). A test-only LightningModule, so anchors get devices and DDP too."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchvision.transforms.functional import to_pil_image, to_tensor

from latentbridge import routes
from latentbridge.codecs.traditional import code_image
from latentbridge.core.mosaic import shares, tile, untile
from latentbridge.metrics.rate_accuracy import RateAccuracy


class AnchorEvaluation(L.LightningModule):
    """``trainer.test`` of one anchor codec at one quality, through a trained run's encoder and class texts."""

    def __init__(
        self,
        bridge: Any,
        codec: str,
        quality: int,
        vtm: dict[str, Any],
        few_shot_groups: int,
        seed: int,
        mosaic: int = 1,
    ) -> None:
        super().__init__()
        self.mosaic = int(mosaic)  # code m x m mosaics of the test images (latentbridge/core/mosaic.py)
        self.encoder, self.text_emb = bridge.encoder, bridge.text_emb
        self.codec_name, self.quality, self.vtm = codec, int(quality), vtm
        self.evaluation = RateAccuracy(("method",), few_shot_groups, seed)
        self.test_results: dict[str, Any] | None = None

    def on_test_epoch_start(self) -> None:
        self.text_emb = self.text_emb.to(self.device)
        self.evaluation.reset()

    @torch.no_grad()
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "label" not in batch:
            return
        x, m = batch["image"], self.mosaic
        pictures, count = tile(x, m) if m > 1 else (x, x.shape[0])
        coded = [code_image(to_pil_image(img.cpu()), self.codec_name, self.quality, self.vtm) for img in pictures]
        x_hat = torch.stack([to_tensor(img) for _, img in coded]).to(x.device)
        nbytes: list[float] = [len(data) for data, _ in coded]
        if m > 1:  # each image pays its share of its mosaic (headers shared as the learned codec's container is)
            x_hat, nbytes = untile(x_hat, m, count), shares([len(data) for data, _ in coded], m, count)
        emb = {"method": routes.decoded_image(self, x_hat)}
        self.evaluation.update(batch, emb, self.text_emb, nbytes, x_hat)

    def on_test_epoch_end(self) -> None:
        self.test_results = self.evaluation.compute()
