"""Published weights of paper 1 in the formats their authors wrote them (REFERENCE.md 6), mapped onto ours.

- **ELIC** of VincentChandelier/ELiC-ReImplemetation (``Network.TestModel``; checkpoints at lambda 0.004, 0.008,
  0.016, 0.032, 0.15, 0.45) and the ``state_dict`` of the released d1/d2/d3 files of NYCU-MAPL/BridgingCompressionMLLM
  (``ELIC_LLM``, the same module): keys ``g_a``, ``g_s``, ``h_a``, ``h_s``, ``cc_transforms``, ``context_prediction``,
  ``ParamAggregation``, ``entropy_bottleneck``, ``gaussian_conditional``, written by compressai 1.1.5 / 1.2.0
  (``_matrix0`` ...). They load into compressai's ``Elic2022Chandelier`` (the same layers, the channel context of the
  first and the latest group, the same checkerboard, means before scales): the golden outputs of the reference code
  decide (``tests/test_reference_elic.py``: y, y_hat, means, scales, likelihoods and x_hat equal in float32).
  The entropy tables are derived (``update(force=True)``), never read from the file.
- **The transform-neck** of the released files (``adapter``: ``Linear_Encoder``): ``trans_latent_dim`` (our
  ``proj``), ``class_embedding``, ``positional_embedding``, ``ln_pre``, ``transformer.resblocks.0`` (our
  ``blocks.0``: the same attention and QuickGELU MLP, sequence-first there, batch-first here).
Their loaders strip ``module.`` and ``base_coder.`` prefixes; so do we. A file of another architecture is a one-line
``CheckpointError`` naming the first key or shape that does not fit.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from latentbridge.core.errors import CheckpointError

#: the paper's rate points, by the index of the released files (d1_1 ... d1_4)
RELEASED_LAMBDAS = {1: 0.004, 2: 0.008, 3: 0.016, 4: 0.032}
PREFIXES = ("module.", "base_coder.")
#: derived buffers and constants (by their last name): recomputed or kept by our modules, never read from a file
DERIVED = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table", "target", "mask", "bound", "scale_bound")
#: parts of the released ELIC_LLM that its neck training never used (the neck is the file's ``adapter``)
UNUSED = ("llm_trans_encoder.",)

_ELIC_RULES = [
    (r"^(g_a|g_s)\.", r"\1."),
    (r"^(h_a|h_s|entropy_bottleneck)\.", r"latent_codec.hyper.\1."),
    (r"^cc_transforms\.(\d+)\.", lambda m: f"latent_codec.y.channel_context.y{int(m[1]) + 1}."),
    (r"^context_prediction\.(\d+)\.", r"latent_codec.y.latent_codec.y\1.context_prediction."),
    (r"^ParamAggregation\.(\d+)\.", r"latent_codec.y.latent_codec.y\1.entropy_parameters."),
]
_NECK_RULES = [
    (r"^trans_latent_dim\.", "proj."),
    (r"^(class_embedding|positional_embedding)$", r"\1"),
    (r"^ln_pre\.", "ln_pre."),
    (r"^transformer\.resblocks\.(\d+)\.(attn|ln_1|ln_2|mlp\.c_fc|mlp\.c_proj)\.", r"blocks.\1.\2."),
]


def strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in state.items():
        for p in PREFIXES:
            k = k.removeprefix(p)
        out[k] = v
    return out


def is_reference_elic(state: dict[str, Any]) -> bool:
    """Whether a state dict has the reference ELIC's layout (``ParamAggregation`` / ``cc_transforms``)."""
    return any(k.startswith(("ParamAggregation.", "cc_transforms.")) for k in strip_prefixes(state))


def _map(state: dict[str, Any], rules: list[tuple[str, Any]], source: str, what: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in strip_prefixes(state).items():
        if key.startswith(UNUSED) or _derived(key):
            continue
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise CheckpointError(f"{source}: key '{key}' is not part of {what}")
    return out


def check_fits(mapped: dict[str, Tensor], ours: dict[str, Tensor], source: str, what: str) -> None:
    """Every mapped tensor has our shape, and every parameter of ours is there (one line naming the first that
    does not fit)."""
    for k, v in mapped.items():
        mine = ours.get(_new_eb_name(k))
        if mine is None:
            raise CheckpointError(f"{source}: key '{k}' has no counterpart in {what}")
        if tuple(mine.shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: '{k}' has shape {tuple(v.shape)}, {what} has {tuple(mine.shape)}")
    given = {_new_eb_name(k) for k in mapped}
    missing = [k for k in ours if k not in given and not _derived(k)]
    if missing:
        raise CheckpointError(f"{source}: {what} needs '{missing[0]}', which the file does not have")


def _derived(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in DERIVED


def _new_eb_name(k: str) -> str:
    """compressai 1.1.5 / 1.2.0 entropy-bottleneck names (``_matrix0``) -> compressai 1.2.8's (``matrices.0``)."""
    for old, new in (("._matrix", ".matrices."), ("._bias", ".biases."), ("._factor", ".factors.")):
        if old in k:
            head, idx = k.split(old)
            return f"{head}{new}{idx}"
    return k


def elic_state(state: dict[str, Any], model: Any, source: str) -> dict[str, Tensor]:
    """A reference ELIC state dict -> ``Elic2022Chandelier``'s names (checked against ``model``)."""
    what = f"compressai's Elic2022Chandelier (N={model.g_a[0].out_channels}, M={model.g_a[-2].out_channels})"
    mapped = {_new_eb_name(k): v for k, v in _map(state, _ELIC_RULES, source, "the reference ELIC").items()}
    check_fits(mapped, model.state_dict(), source, what)
    return mapped


def neck_state(state: dict[str, Any], neck: Any, source: str) -> dict[str, Tensor]:
    """A released ``adapter`` (``Linear_Encoder``) -> ``TransformNeck``'s names (checked against ``neck``)."""
    mapped = _map(state, _NECK_RULES, source, "the released transform-neck (Linear_Encoder)")
    check_fits(mapped, neck.state_dict(), source, f"the transform-neck {tuple(neck.grid_size)} grid")
    return mapped
