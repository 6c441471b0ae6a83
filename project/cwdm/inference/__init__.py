"""Inference on a folder of cases: the end-to-end flow (:mod:`.run`), the synthesizer that loads the models
once and processes the cases (:mod:`.synthesizer`), one case before and after sampling (:mod:`.casework`),
the output folder's rules (:mod:`.outputs`), the run report (:mod:`.report`), and speed: the prepared
network call (:mod:`.fastpath`), background I/O (:mod:`.throughput`) and one worker per GPU
(:mod:`.workers`)."""
