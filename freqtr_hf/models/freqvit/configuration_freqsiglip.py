"""FreqSigLIP configuration: SigLIP's vision tower config (`SiglipVisionConfig`) plus the token-reduction fields
(`ReductionConfigMixin`)."""

from huggingface_hub.dataclasses import strict
from transformers import SiglipVisionConfig

from .configuration_reduction import ReductionConfigMixin


@strict(accept_kwargs=True)
class FreqSiglipVisionConfig(ReductionConfigMixin, SiglipVisionConfig):
    r"""
    Configuration of SigLIP's vision tower whose blocks reduce tokens: every `SiglipVisionConfig` field keeps its
    meaning, and the fields of `ReductionConfigMixin` set the reduction. SigLIP has no CLS token: every token is a
    patch and a candidate, the scores that read the CLS token's attention (`topk`, `evit`, `ats`) are refused, and the
    attention-pooling head reads whatever tokens remain. Loads SigLIP checkpoints, of the vision tower or of the whole
    model (`google/siglip-*`: its `vision_config`). SigLIP 2's variable-size inputs (NaFlex, model type `siglip2`)
    are refused: their padded patch sequences have no fixed grid for the DC windows.
    """

    model_type = "freqsiglip_vision_model"
    compatible_model_types = ("freqsiglip_vision_model", "siglip_vision_model", "siglip")
    refused_model_types = {
        kind: f"a SigLIP 2 NaFlex checkpoint (model_type {kind!r}): its inputs are padded sequences of patches of "
        "varying grids, which the DC windows and the restoration onto a grid do not handle; SigLIP 2's fixed-resolution "
        "checkpoints (google/siglip2-*-patch16-224 and the like, model_type 'siglip') load"
        for kind in ("siglip2", "siglip2_vision_model")
    }
    auto_map_entries = {
        "AutoConfig": "configuration_freqsiglip.FreqSiglipVisionConfig",
        "AutoModel": "modeling_freqsiglip.FreqSiglipVisionModel",
    }

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    def head_macs(self, length: int) -> int:
        """The attention-pooling head over the `length` final tokens: one probe query, its keys and values, the
        output projection and the MLP on the pooled token."""
        if not self.vision_use_head:
            return 0
        width = self.hidden_size
        return 2 * width * width + 2 * length * width * width + 2 * length * width + 2 * width * self.intermediate_size


# save_pretrained copies this module (and the config's auto_map names it), for trust_remote_code=True
FreqSiglipVisionConfig.register_for_auto_class()

__all__ = ["FreqSiglipVisionConfig"]
