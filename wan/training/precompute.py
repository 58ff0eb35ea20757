"""Cache the frozen encoders' outputs on disk so training runs without loading them.

    python -m wan.training.precompute --model_dir checkpoints/StableAvatar-1.3B-square \
        --data talking_face_data/video_square_path.txt:512x512 --output cache/square --samples_per_clip 4

Each file holds one sample's `EncodedBatch` (VAE posteriors, text/CLIP/wav2vec2 features, masks); a
cached sample keeps its window of frames, so cache several windows per clip. File names start with the
size (`832x480_000012_001.safetensors`), so one folder holds several sizes; training batches samples of
one size at a time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors import safe_open
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..cli import run_cli
from ..errors import UserFacingError
from ..pipeline.pipeline import StableAvatarPipeline
from .dataset import TalkingFaceDataset, collate
from .encode import EncodedBatch, encode_batch


class PrecomputedDataset(Dataset):
    """Cached samples (`.safetensors` files, by default every one in `folder`), as `EncodedBatch` items of
    batch size 1."""

    def __init__(self, folder: str | Path, files: list[Path] | None = None) -> None:
        self.files = sorted(Path(folder).glob("*.safetensors")) if files is None else files
        if not self.files:
            raise UserFacingError(
                f"no cached samples in {folder}; run python -m wan.training.precompute first"
            )

    @classmethod
    def by_size(cls, folder: str | Path) -> list[PrecomputedDataset]:
        """One dataset per sample shape (frames, height, width) in the folder, so batches stack."""
        groups: dict[tuple[int, ...], list[Path]] = {}
        for path in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as handle:
                shape = tuple(handle.get_slice("face_masks").get_shape()[2:])
            groups.setdefault(shape, []).append(path)
        if not groups:
            return [cls(folder)]  # raises, saying what to do
        return [cls(folder, files) for _, files in sorted(groups.items())]

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:  # cached windows are fixed
        pass

    def __getitem__(self, index: int) -> EncodedBatch:
        return EncodedBatch.load(self.files[index])

    @staticmethod
    def collate(items: list[EncodedBatch]) -> EncodedBatch:
        return EncodedBatch.stack(items)


def precompute(
    pipe: StableAvatarPipeline, dataset: TalkingFaceDataset, output: Path, samples_per_clip: int
) -> int:
    """Write `samples_per_clip` windows of every clip, named by the dataset's size; returns the number of files."""
    if dataset.width % 16 or dataset.height % 16:
        raise UserFacingError(
            f"size {dataset.width}x{dataset.height}: width and height must be multiples of 16 (e.g. 512x512)"
        )
    output.mkdir(parents=True, exist_ok=True)
    count = 0
    with tqdm(total=samples_per_clip * len(dataset), desc="caching features", unit="sample") as bar:
        for round_index in range(samples_per_clip):
            dataset.set_epoch(round_index)
            for index in range(len(dataset)):
                encode_batch(pipe, collate([dataset[index]])).save(
                    output / f"{dataset.width}x{dataset.height}_{index:06d}_{round_index:03d}.safetensors"
                )
                count += 1
                bar.update()
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wan.training.precompute",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model_dir", type=Path, required=True, help="converted model folder (python -m wan.convert)"
    )
    parser.add_argument("--data", required=True, help="PATH_LIST.txt:WIDTHxHEIGHT")
    parser.add_argument("--output", type=Path, required=True, help="cache folder")
    parser.add_argument("--num_frames", type=int, default=81, help="frames per sample (4k+1)")
    parser.add_argument("--samples_per_clip", type=int, default=4, help="windows cached per clip")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    list_file, _, size = args.data.rpartition(":")
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise UserFacingError(
            f"--data {args.data}: write PATH_LIST:WIDTHxHEIGHT, e.g. list.txt:512x512"
        ) from None
    if width % 16 or height % 16 or width <= 0 or height <= 0:
        raise UserFacingError(f"--data {args.data}: width and height must be positive multiples of 16")
    pipe = StableAvatarPipeline.from_pretrained(args.model_dir)
    dataset = TalkingFaceDataset(list_file, width, height, args.num_frames, args.seed)
    print(f"wrote {precompute(pipe, dataset, args.output, args.samples_per_clip)} samples to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
