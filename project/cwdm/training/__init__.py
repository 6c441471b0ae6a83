"""Training one target's denoiser: the end-to-end flow (:mod:`.run`), the cases and crops
(:mod:`.data`), the resumable loop (:mod:`.trainer`) and where it runs (:mod:`.distributed`)."""
