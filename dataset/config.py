"""DataConfig: where the pretokenized data lives and how it is read (flat command-line keys)."""
from __future__ import annotations

from dataclasses import dataclass

DATA_FORMATS = ("z2all", "raw_uint16")


@dataclass(frozen=True)
class DataConfig:
    """Where the pretokenized data lives (one directory, or a mix of corpora) and how it is read."""

    data_dir: str = ""  # directory of pretokenized .bin shards; "" = the demo corpus (built on first use)
    # Pretraining on several corpora instead of data_dir, weights normalised; PATH: a dir of .bin shards, raw
    # .jsonl/.json/.parquet/.txt (pretokenized on first use) or demo:code / demo:prose. Form:
    data_mix: str = ""  # "NAME:WEIGHT:PATH,NAME:WEIGHT:PATH,..."
    # Later mixes, each from optimizer step STEP on; a new source needs its PATH, a source left out gets no samples
    # there; on --resume keep the stages up to the current step and add later ones. Form:
    data_stages: str = ""  # "STEP:NAME:WEIGHT[:PATH],...;STEP:NAME:WEIGHT[:PATH],..."
    valid_data_dir: str = ""  # separate validation shards; "" = split off valid_ratio of data_dir's windows
    valid_ratio: float = 0.01  # fraction of windows held out for validation when valid_data_dir is ""
    tokenizer_dir: str = ""  # tokenizer used to make data_dir; "" = the demo tokenizer
    data_format: str = "z2all"  # z2all (headered .bin) | raw_uint16 (nanoGPT-style headerless)
    data_seed: int = 1234  # sampler shuffle seed (per epoch: data_seed + epoch)
    num_workers: int = 0  # DataLoader worker processes
    prefetch: bool = True  # pinned-memory prefetch of the next batch on CUDA

    def validate(self) -> None:
        if self.data_format not in DATA_FORMATS:
            raise ValueError(f"--data_format={self.data_format!r} is not one of {', '.join(DATA_FORMATS)}")
        if not 0.0 <= self.valid_ratio < 1.0:
            raise ValueError(f"--valid_ratio must be in [0, 1), got {self.valid_ratio}")
        if self.data_mix:
            from dataset.mixture import parse_mix

            if self.data_dir:
                raise ValueError(f"--data_mix and --data_dir={self.data_dir} exclude each other (--data_dir is the "
                                 f"one-source case): drop one of them")
            if self.valid_data_dir:
                raise ValueError(f"--valid_data_dir={self.valid_data_dir} is for --data_dir: a mix holds out "
                                 f"--valid_ratio of each source's own windows; drop --valid_data_dir")
            parse_mix(self.data_mix, self.data_stages)  # raises with the mistake and the fix
        elif self.data_stages:
            raise ValueError("--data_stages changes the weights of --data_mix's sources: set --data_mix too")
        if self.num_workers < 0:
            raise ValueError(f"--num_workers must be >= 0, got {self.num_workers}")
