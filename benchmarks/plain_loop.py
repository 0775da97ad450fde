"""A trial's training without Ray: a plain PyTorch loop in a fresh process (the overhead baseline).

    python -m benchmarks.plain_loop --config run.json
    torchrun --standalone --nproc-per-node 2 -m benchmarks.plain_loop --config run.json

``run.json`` holds ``{"distill": {...}, "data": {...}}`` (a DistillConfig and a DataConfig). The
process imports torch and cmkd, loads the benchmark and its bank from disk, keeps its rank's rows
(every ``world``-th labelled row from ``rank`` on, the same count on every rank, as a Train worker
takes its share), trains the epochs with :class:`cmkd.train.Run` on one torch thread (gloo
all-reduce between ranks under torchrun) and prints, on rank 0, one JSON line of wall-clock
stamps: the process's start, imports done, data loaded, each epoch's end.
"""

from __future__ import annotations

import time

import psutil

STARTED = psutil.Process().create_time()  # the process's own start, before any import

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from cmkd.config import DataConfig, DistillConfig  # noqa: E402
from cmkd.train import Run, load_run_data  # noqa: E402

IMPORTED = time.time()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="JSON file: {'distill': ..., 'data': ...}")
    args = p.parse_args(argv)
    spec = json.loads(open(args.config).read())
    torch.set_num_threads(1)  # as a Train worker and a trial's own process
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    data_cfg = DataConfig.model_validate(spec["data"])
    data = load_run_data(data_cfg, log=lambda *_: None)
    if world > 1:
        keep = slice(rank, len(data.y_train) // world * world, world)
        data = dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
    loaded = time.time()
    cfg = DistillConfig.model_validate(spec["distill"])
    run = Run(cfg, data, data_cfg, rank=rank, world=world)
    epochs = []
    while run.epoch < cfg.epochs:
        run.run_epoch()
        epochs.append(time.time())
    if world > 1:
        dist.destroy_process_group()
    if rank == 0:
        print(
            json.dumps(
                {"started": STARTED, "imported": IMPORTED, "loaded": loaded, "epochs": epochs}
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
