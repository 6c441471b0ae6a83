"""Case files: finding the cases of a folder and their missing sequence (:mod:`.discovery`), reading
and writing NIfTI volumes (:mod:`.volumes`), reading a case's sequences on one grid (:mod:`.reader`), and
the preprocessing and post-processing of their values (:mod:`.preprocessing`)."""
