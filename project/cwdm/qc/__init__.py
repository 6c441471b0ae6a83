"""Quality control: a preview picture of each synthesis (:mod:`.previews`) and an HTML contact sheet of a
run (:mod:`.sheet`), for ``cwdm infer --qc`` and ``cwdm qc`` (:mod:`.run`)."""
