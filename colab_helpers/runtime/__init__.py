"""Stage 0, the machine: what we run on and how to live with it.

- :mod:`.environment` -- runtime, accelerator, memory, package versions, and what that allows;
- :mod:`.memory` -- RAM / GPU / disk figures, peak memory of a block, freeing caches;
- :mod:`.cuda_fallback` -- one predicate for CUDA failures, a retry on the CPU;
- :mod:`.downloads` -- one zip of a run, a download that suits where we run, a copy to Drive;
- :mod:`.hub` -- can the Hugging Face Hub be reached (cached);
- :mod:`.kernel` -- is a notebook kernel running this code;
- :mod:`.secrets` -- secret names and the redactor for everything we write or show;
- :mod:`.files` -- atomic writes and writable-directory checks;
- :mod:`.records` -- plain-JSON conversion and saved result files;
- :mod:`.modules` -- facts about a loaded torch module: its device and parameter count;
- :mod:`.notebooks` -- headless notebook execution (papermill) for the tests and ``make demo``.

Everything here imports only the standard library at import time, and nothing from the later stages.
"""
