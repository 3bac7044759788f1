"""icl-lab's side of a peer benchmark: Trainer.train_step of a bundled config, on one torch thread,
and the time its matrix-product and attention kernels take per step.

python benchmarks/peers/ours_worker.py CONFIG [OVERRIDE ...]   (started by singh.py)
"""

import sys
import tempfile
import time
from pathlib import Path

from worker import protocol_channel, serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common


def main() -> None:
    """Build the trainer for argv's config and overrides, then serve its train_step."""
    channel = protocol_channel()
    start = time.perf_counter()
    import torch

    from common import kernel_seconds
    from icl_lab.experiment import load_config
    from icl_lab.store.run import Run
    from icl_lab.training.trainer import Trainer

    torch.set_num_threads(1)
    config, overrides = sys.argv[1], sys.argv[2:]
    trainer = Trainer(Run.create(load_config(config, overrides), Path(tempfile.mkdtemp())), progress=False)
    serve(
        channel,
        trainer.train_step,
        lambda: None,
        time.perf_counter() - start,
        {"torch": torch.__version__},
        lambda: {"kernel_s_per_step": kernel_seconds(trainer.train_step, 50)},
    )


if __name__ == "__main__":
    main()
