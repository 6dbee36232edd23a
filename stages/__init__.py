"""steep: the pipeline's stages, in layers (core, curate, variant, probe, report); see README's Layout."""
