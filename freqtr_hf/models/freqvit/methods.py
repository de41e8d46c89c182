"""The reduction methods by name and family, and `freq`'s option presets: plain data, read without torch by the config,
the schedule, the model and the command line alike."""

# Pruning keeps candidates and drops the rest; merging turns every non-CLS token into k merged tokens.
PRUNING_METHODS = ("topk", "radial", "ats", "dynamicvit")
MERGING_METHODS = ("tome", "kmedoids", "dpcknn", "sit", "patchmerger", "sinkhorn")
# Soft merging into as many learned outputs as the configured patch grid gives: they run on that grid only.
FIXED_OUTPUT_METHODS = ("sit", "patchmerger", "sinkhorn")
# Methods that weight attention keys with an additive bias (ToMe's sizes, ATS's padding, DynamicViT's training mask).
KEY_WEIGHT_METHODS = ("tome", "ats", "dynamicvit")
REDUCTION_METHODS = ("none", "freq", "evit", *PRUNING_METHODS, *MERGING_METHODS)
# Methods that score tokens by the CLS token's attention: not for models without a CLS token (SigLIP).
CLS_SCORE_METHODS = ("topk", "evit", "ats")
# The methods that need no training: they run on any pretrained ViT as it is.
TRAINING_FREE_METHODS = ("freq", "topk", "evit", "tome", "kmedoids", "ats", "radial")
# Where `freq` reads its token scores: the attention matrix (the paper's method), or the attention logits (App. J)
SCORE_SOURCES = ("attention", "logits")
# The best frequency-aware model without training (docs/training_free.md): config overrides for `from_pretrained`.
# It leaves the token budget (reduction_layers, keep_rate, dc_window_sizes) alone, so the MACs are the paper's.
TRAINING_FREE_FREQ = {
    "low_frequency_merge": "nearest",
    "merge_features": "hidden_states",
    "proportional_attention": True,
    "dc_key_weight_exponent": 0.5,
    "low_frequency_pool": 0.25,
}
# `freq`'s option sets by name, for the commands' `--preset`: the paper's method (its values of the fields the
# training-free model sets, so that it also resets a checkpoint saved with them), and the training-free model
FREQ_PRESETS = {
    "paper": {
        "low_frequency_merge": "dc_window", "merge_features": "hidden_states", "proportional_attention": False,
        "dc_key_weight_exponent": 1.0, "low_frequency_pool": 0.0,
    },
    "training_free": TRAINING_FREE_FREQ,
}
# How a dense backbone puts back, on the full patch grid, a patch that left the sequence (docs/dense.md):
# "carrier": the feature of the token that carries it; "residual": its own state when it left plus what its carrier
# gained since (the paper's residual injection); "nearest": its own state plus what the most similar token of the
# shortened sequence gained since. A dropped patch (pruning) always follows the most similar token.
TOKEN_RESTORATIONS = ("carrier", "residual", "nearest")
