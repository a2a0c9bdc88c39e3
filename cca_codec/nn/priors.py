"""The network's two entropy models: CompressAI's for training, frozen stand-ins for coding.

Training uses CompressAI's `EntropyBottleneck` (the factorized z prior) and `GaussianConditional`:
their likelihoods, quantile loss and `update()`, which builds the integer CDF tables that every
checkpoint freezes. Coding only reads those frozen tables and the z medians, so a network loaded
for coding holds `FrozenEntropyModel`s instead: the same state-dict entries, no CompressAI code.
That keeps `import compressai` (whose package `__init__` pulls in its datasets, torch_geometric,
torch._dynamo and scipy: seconds at every start) out of `ccacodec encode` and `decode`.
"""
from __future__ import annotations

from torch import Tensor, nn

CDF_KEYS = ("_quantized_cdf", "_cdf_length", "_offset")
"""The frozen integer tables every entropy model carries (CompressAI's layout, cca_codec.entropy.tables)."""
Z_PRIOR_KEYS = ("quantiles", *CDF_KEYS)
"""What coding reads from the z prior: the quantiles (their middle one is the median) and its tables."""


def entropy_models(channels: int, trainable: bool) -> tuple[nn.Module, nn.Module]:
    """(z prior over `channels` channels, Gaussian conditional): CompressAI's modules when
    `trainable`, else frozen stand-ins that a checkpoint's tensors are loaded into."""
    if not trainable:
        return FrozenEntropyModel(Z_PRIOR_KEYS), FrozenEntropyModel(CDF_KEYS)
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional

    return EntropyBottleneck(channels), GaussianConditional(None)


class FrozenEntropyModel(nn.Module):
    """The state of a trained CompressAI entropy model, as loaded from a checkpoint.

    It keeps every tensor the state dict has under its prefix (as buffers, so `.to()` moves them;
    `state_dict()` gives them back under their original names) and requires `required` among
    them. It computes nothing but the z prior's medians: it cannot be trained or evaluated.
    """

    def __init__(self, required: tuple[str, ...]) -> None:
        super().__init__()
        self.required = required
        self._names: dict[str, str] = {}  # state-dict name -> buffer name (dots are not allowed there)

    def tensor(self, name: str) -> Tensor:
        """The loaded tensor of state-dict entry `name` (KeyError before loading)."""
        return self._buffers[self._names[name]]

    @property
    def _quantized_cdf(self) -> Tensor:
        return self.tensor("_quantized_cdf")

    @property
    def _cdf_length(self) -> Tensor:
        return self.tensor("_cdf_length")

    @property
    def _offset(self) -> Tensor:
        return self.tensor("_offset")

    def _get_medians(self) -> Tensor:
        """(C, 1, 1) medians of the z prior: the middle of its three quantiles, as in CompressAI."""
        return self.tensor("quantiles")[:, :, 1:2]

    def _load_from_state_dict(
        self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        own = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        missing_keys.extend(prefix + name for name in self.required if name not in own)
        for name, value in own.items():
            buffer = self._names.setdefault(name, f"_frozen{len(self._names)}")
            self.register_buffer(buffer, value.detach().clone())

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        for name, buffer in self._names.items():
            value = self._buffers[buffer]
            destination[prefix + name] = value if keep_vars else value.detach()
