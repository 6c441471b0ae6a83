"""The method itself, as published: the Haar wavelet transform and its coefficient scaling
(:mod:`.wavelets`), the denoiser U-Net (:mod:`.denoiser`), the noise schedule and its respacing
(:mod:`.schedule`), and the reverse-diffusion samplers (:mod:`.sampling`). Pure tensor code: no files,
no devices chosen here."""
