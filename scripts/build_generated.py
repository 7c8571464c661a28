"""Sample the shipped recovery text from SmolLM2-135M-Instruct (colab_helpers/embedded/generated, see SOURCE.md).

    python scripts/build_generated.py            # 3 x 32 texts of up to 128 new tokens: minutes on a CPU
    python scripts/build_generated.py --first 3 --parts 3 --out part.jsonl.gz   # seeds 3, 4, 5 only (one process
                                                 # per core; concatenated in seed order they equal one longer run)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=3, help="calls of 32 samples, seeded first, first + 1, ...")
    parser.add_argument("--first", type=int, default=0, help="seed of the first call")
    parser.add_argument("--out", type=Path, default=ROOT / "colab_helpers" / "embedded" / "generated"
                        / "smollm2-135m-instruct.jsonl.gz")  # fmt: skip
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import colab_helpers as ch
    from colab_helpers.finetune import teacher_texts
    from colab_helpers.runtime.files import atomic_write_bytes

    model, tokenizer = ch.load_model("smollm2-135m-instruct", device="cpu")
    texts: list[str] = []
    for part in range(args.first, args.first + args.parts):
        texts += teacher_texts(model, tokenizer, samples=32, new_tokens=128, batch_size=16, seed=part)
        print(f"{len(texts)} texts", flush=True)
    lines = "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts)
    atomic_write_bytes(args.out, gzip.compress(lines.encode("utf-8"), compresslevel=9, mtime=0))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
