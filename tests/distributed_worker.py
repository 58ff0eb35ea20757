"""Run by the distributed tests under `accelerate launch`: train two steps, write each rank's weights' digest."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.training_helpers import tiny_config  # noqa: E402
from wan.training.trainer import Trainer  # noqa: E402


def main() -> None:
    model_dir, list_file, output = (Path(arg) for arg in sys.argv[1:4])
    trainer = Trainer(
        tiny_config(output, list_file, pipeline_dir=model_dir, max_train_steps=2, checkpointing_steps=2)
    )
    history = trainer.train()
    transformer = trainer.accelerator.unwrap_model(trainer.transformer)
    digest = hashlib.sha256()
    for name, parameter in sorted(transformer.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    rank = trainer.accelerator.process_index
    record = {
        "digest": digest.hexdigest(),
        "world": trainer.accelerator.num_processes,
        "history": history,
        "distributed_type": str(trainer.accelerator.distributed_type),
    }
    (output / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
