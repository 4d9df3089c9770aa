"""A callback that checks, inside a real ``fit``, what each training step runs on: every frozen submodule in eval
mode, every trained one in train mode, and (with a frozen codec) the y_hat reaching the transform-neck equal to the
y_hat a server decodes from the batch's real bitstreams."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import lightning as L
import torch

from latentbridge.codecs.bitstream import decode_latent, encode_batch


class FrozenProbe(L.Callback):
    """``frozen`` / ``trained``: submodule paths of the LightningModule (e.g. ``codec``, ``codec.model.g_s``).
    Raises ``AssertionError`` from inside ``fit`` on the first violation; ``checked`` counts checked batches."""

    checked: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, frozen: Sequence[str], trained: Sequence[str], coded_y_hat: bool = False) -> None:
        self.frozen, self.trained, self.coded_y_hat = list(frozen), list(trained), coded_y_hat
        self._y_hat: torch.Tensor | None = None
        self._hook: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.coded_y_hat:
            pl_module.codec.model.update(force=True)  # the entropy tables of the (frozen) weights
            self._hook = pl_module.neck.register_forward_pre_hook(self._keep_input)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()

    def _keep_input(self, module: Any, args: tuple[Any, ...]) -> None:
        if module.training:  # the training step's call, not validation's
            self._y_hat = args[0].detach().clone()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        for path in self.frozen:
            wrong = [n or path for n, m in pl_module.get_submodule(path).named_modules() if m.training]
            assert not wrong, f"epoch {trainer.current_epoch} batch {idx}: frozen {path} in train mode: {wrong[:3]}"
        for path in self.trained:
            wrong = [n or path for n, m in pl_module.get_submodule(path).named_modules() if not m.training]
            assert not wrong, f"epoch {trainer.current_epoch} batch {idx}: trained {path} in eval mode: {wrong[:3]}"
        self._y_hat = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, out: Any, batch: Any, idx: int):
        row = {"epoch": trainer.current_epoch, "batch": idx, "cached": "y_hat" in batch}
        if self.coded_y_hat:
            assert self._y_hat is not None, "the training step did not run the transform-neck"
            images = batch["image"] if "image" in batch else self._images(trainer, batch["index"])
            codec, lmbda = pl_module.codec, pl_module.codec.lmbda
            streams, _ = encode_batch(codec, images.to(pl_module.device), lmbda)
            coded = torch.cat([decode_latent(codec, s, lmbda)[0] for s in streams]).to(self._y_hat.device)
            diff = float((self._y_hat.float() - coded).abs().max())
            assert diff < 1e-5, f"epoch {trainer.current_epoch} batch {idx}: the neck trained on y_hat {diff} away"
            row["max_abs_diff"] = diff
        FrozenProbe.checked.append(row)

    @staticmethod
    def _images(trainer: L.Trainer, index: torch.Tensor) -> torch.Tensor:
        """The codec input of the cached batch's images (by their dataset index)."""
        images = trainer.datamodule.base._dataset("train", None)
        return torch.stack([images[int(i)]["image"] for i in index])
