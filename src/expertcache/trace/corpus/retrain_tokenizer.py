"""Retrain the shipped demo tokenizer: ``python -m expertcache.trace.corpus.retrain_tokenizer``.

Run it only when the demo corpus changes: token ids of existing traces refer to this file.
"""

from pathlib import Path

from .demo import train_demo_tokenizer

if __name__ == "__main__":
    target = Path(__file__).resolve().parents[2] / "data" / "demo" / "tokenizer.json"
    train_demo_tokenizer(target)
    print(f"wrote {target}")
