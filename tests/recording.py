"""Test-side spy on pretraining: records every micro-batch the training loop takes, in the order it takes them, to
OUTPUT/batches_rank{R}.jsonl ({"micro", "batch_id", "indices"} per line).

In this process: `install(output_dir)` (undo with the returned `restore`). In a subprocess or under
`accelerate launch`: run this file with train.pretrain's arguments instead of `-m train.pretrain`.
"""

import json
import sys
from pathlib import Path


class _RecordingLoader:
    def __init__(self, loader, path: Path, start: int):
        self.loader, self.path, self.start = loader, path, start

    def __iter__(self):
        micro = self.start
        with open(self.path, "a") as f:
            for batch in self.loader:
                f.write(json.dumps({"micro": micro, "batch_id": int(batch["batch_id"]),
                                    "indices": batch["indices"].tolist()}) + "\n")
                f.flush()
                micro += 1
                yield batch


def install(output_dir):
    import train.pretrain_data as pretrain_data

    original = pretrain_data.train_loader

    def train_loader(rows, collator, batch_size, seed, rank, world, start, workers):
        loader, sampler = original(rows, collator, batch_size, seed, rank, world, start, workers)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        return _RecordingLoader(loader, Path(output_dir) / f"batches_rank{rank}.jsonl", start), sampler

    pretrain_data.train_loader = train_loader

    def restore():
        pretrain_data.train_loader = original

    return restore


if __name__ == "__main__":
    args = sys.argv[1:]
    install(args[args.index("--output-dir") + 1])
    from train.pretrain import main

    sys.exit(main(args))
