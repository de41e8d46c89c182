"""FreqCLIP configuration: CLIP's vision tower config (`CLIPVisionConfig`) plus the token-reduction fields
(`ReductionConfigMixin`)."""

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig

from .configuration_reduction import ReductionConfigMixin


@strict(accept_kwargs=True)
class FreqCLIPVisionConfig(ReductionConfigMixin, CLIPVisionConfig):
    r"""
    Configuration of CLIP's vision tower whose blocks reduce tokens: every `CLIPVisionConfig` field keeps its meaning,
    and the fields of `ReductionConfigMixin` set the reduction. The CLS token is never reduced. Loads CLIP checkpoints,
    of the vision tower or of the whole model (`openai/clip-vit-*`: its `vision_config`).
    """

    model_type = "freqclip_vision_model"
    compatible_model_types = ("freqclip_vision_model", "clip_vision_model", "clip")
    auto_map_entries = {
        "AutoConfig": "configuration_freqclip.FreqCLIPVisionConfig",
        "AutoModel": "modeling_freqclip.FreqCLIPVisionModel",
    }

    def head_macs(self, length: int) -> int:
        """The vision tower has no head (CLIPModel's projection is not the tower's)."""
        return 0


# save_pretrained copies this module (and the config's auto_map names it), for trust_remote_code=True
FreqCLIPVisionConfig.register_for_auto_class()

__all__ = ["FreqCLIPVisionConfig"]
