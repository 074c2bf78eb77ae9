"""dataset: the on-disk token format, sample-index maps, PretrainDataset, SFT/DPO datasets with packing and
collate (dataset.sft), the resumable sampler, prefetch.

The torch-based classes are imported on first use, so `dataset.format` stays light for preprocessing CLIs.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "PretrainDataset": "dataset.pretrain",
    "ResumableBatchSampler": "dataset.sampler",
    "BatchPrefetcher": "dataset.prefetch",
    "load_or_build_sample_index": "dataset.sample_index",
    "open_bin": "dataset.format",
    "write_bin": "dataset.format",
    "BinWriter": "dataset.format",
    **{name: "dataset.sft" for name in ("SFTDataset", "DPODataset", "PackedSFTDataset", "pack_examples",
                                         "collate_padded", "collate_packed", "collate_dpo", "SFTBatch", "DPOBatch")},
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dataset' has no attribute {name!r}")
