"""dataset: the on-disk token format (format.py), sample-index maps (sample_index.py), PretrainDataset (pretrain.py),
SFT/DPO datasets with packing and collate (sft.py), the resumable sampler (sampler.py), BatchStream (loader.py)
and the CUDA prefetcher (prefetch.py).

Import the submodules directly (`from dataset.format import BinWriter`): the package imports nothing, so the
light `dataset.format` stays free of torch for the preprocessing CLIs.
"""
