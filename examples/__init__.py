"""Examples of weave_nvshmem in use: a TP Llama decoder with TokenWeave overlap (``llama``, its check
and CLI ``tp_llama``, its layer benchmark ``bench_layer``) and a CuPy pipeline (``cupy_pipeline``).
Import them as ``examples.<name>`` from the repository root; nothing here edits ``sys.path``."""
