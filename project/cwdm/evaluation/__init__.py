"""Scoring syntheses against the ground truth: the metrics by region (:mod:`.metrics`), the organisers'
tumour / non-tumour SSIM (:mod:`.brasyn`), folders of predictions (:mod:`.evaluate`), and
pseudo-validation folders made as the organisers make them (:mod:`.drop`)."""
