"""Denoiser weights: checkpoint files read and written without executing code (:mod:`.checkpoints`), a
weights directory with one checkpoint per target (:mod:`.folder`), and the build-time download of the
published checkpoints (:mod:`.hub`, which nothing at run time imports); the weights used when none are
given (:mod:`.shipped`)."""
