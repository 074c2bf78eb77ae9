"""dataset.sft: the datasets, packing, the collate functions, and packed == unpacked through the real model."""
import pickle

import numpy as np
import pytest
import torch

from data_preprocess.pretokenize_sft import ensure_pretokenized
from dataset.sft import (IGNORE_INDEX, DPODataset, PackedSFTDataset, SFTDataset, collate_dpo, collate_packed,
                         collate_padded, pack_examples)
from model import Z2allConfig, Z2allForCausalLM
from tests.unit.dataset.sft_fixtures import CHATS, tiny_tokenizer, write_jsonl

SEQ = 96


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    tok, tdir = tiny_tokenizer(tmp / "tok")
    extra = [[{"role": "user", "content": f"q{i} " * (i % 5 + 1)}, {"role": "assistant", "content": f"a{i} " * (i % 7 + 1)}]
             for i in range(12)]
    src = write_jsonl(tmp / "sft.jsonl", [{"messages": c} for c in CHATS + extra])
    out = ensure_pretokenized(src, tdir, str(tmp / "out"), max_seq_len=SEQ, progress=False, log=lambda *_: None)
    return tok, out


def test_pack_examples_is_deterministic_complete_and_full():
    lengths = np.random.default_rng(0).integers(8, 60, size=500)
    lengths[::50] = 250  # a few long ones in a skewed-short set
    order = np.random.default_rng(1).permutation(500)
    rows = pack_examples(lengths, 256, order)
    assert [r.tolist() for r in rows] == [r.tolist() for r in pack_examples(lengths, 256, order)]
    placed = np.concatenate(rows)
    assert sorted(placed.tolist()) == list(range(500))
    assert max(lengths[r].sum() for r in rows) <= 256
    assert lengths.sum() / (256 * len(rows)) > 0.95  # rows come out nearly full
    assert sorted(np.concatenate(pack_examples(lengths, 256, order[:10])).tolist()) == sorted(order[:10].tolist())
    with pytest.raises(ValueError, match="example 0 has 250 tokens"):
        pack_examples(lengths, 200)


def test_collate_packed_alignment_positions_and_segments(sft_dir):
    tok, out = sft_dir
    ds = SFTDataset(out)
    packed = PackedSFTDataset(ds, seed=3)
    assert packed.max_seq_len == SEQ and sorted(np.concatenate(packed.rows).tolist()) == list(range(len(ds)))
    rows = [packed[r] for r in range(len(packed))]
    b = collate_packed(rows, SEQ, ds.pad_id)
    assert b.input_ids.shape == b.targets.shape == b.position_ids.shape == (len(rows), SEQ)
    assert b.cu_seqlens.dtype == torch.int32 and b.cu_seqlens[-1] == len(rows) * SEQ
    labels = sum(int(m[1:].sum()) for row in rows for _, m in row)
    assert b.num_label_tokens == labels == int((b.targets != IGNORE_INDEX).sum())
    flat_ids, flat_t, flat_pos = b.input_ids.flatten(), b.targets.flatten(), b.position_ids.flatten()
    cu = b.cu_seqlens.tolist()
    assert b.max_seqlen == max(e - s for s, e in zip(cu, cu[1:]))
    segs = [(ids, m) for row in rows for ids, m in row]
    starts = [s for s in cu[:-1] if flat_pos[s] == 0]
    for ids, m in segs:  # every example appears whole at a segment start, positions 0..n-1
        s = next(s for s in starts if flat_ids[s:s + len(ids)].tolist() == ids.tolist())
        assert flat_pos[s:s + len(ids)].tolist() == list(range(len(ids)))
        expect = [int(ids[t + 1]) if m[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]
        assert flat_t[s:s + len(ids)].tolist() == expect  # the last token never predicts the next example


def test_collate_padded_and_dpo(sft_dir, tmp_path):
    tok, out = sft_dir
    ds = SFTDataset(out)
    b = collate_padded([ds[0], ds[1]], ds.pad_id)
    assert b.cu_seqlens is None and b.input_ids.shape[1] == max(ds.lengths[:2]) == b.max_seqlen
    assert (b.input_ids[0, len(ds[0][0]):] == ds.pad_id).all() and (b.targets[0, len(ds[0][0]) - 1:] == -100).all()
    src = write_jsonl(tmp_path / "dpo.jsonl", [{"prompt": "q", "chosen": "yes indeed", "rejected": "no"},
                                              {"prompt": "longer question here", "chosen": "a", "rejected": "b"}])
    dpo = DPODataset(ensure_pretokenized(src, out + "/tokenizer", str(tmp_path / "d"), task="dpo", max_seq_len=64,
                                         progress=False, log=lambda *_: None))
    batch = collate_dpo([dpo[0], dpo[1]], dpo.pad_id)
    assert batch.num_pairs == 2 and batch.input_ids.shape[0] == 4 and batch.cu_seqlens is None
    assert torch.equal(batch.response_mask, batch.targets != IGNORE_INDEX)
    assert batch.input_ids[0, :len(dpo[0].chosen_ids)].tolist() == dpo[0].chosen_ids.tolist()
    assert batch.input_ids[2, :len(dpo[0].rejected_ids)].tolist() == dpo[0].rejected_ids.tolist()
    resp = [int(p.chosen_mask.sum()) for p in (dpo[0], dpo[1])] + [int(p.rejected_mask.sum()) for p in (dpo[0], dpo[1])]
    assert batch.response_mask.sum(1).tolist() == resp  # every response token (incl. <|im_end|>) is a target


def test_dataset_errors_and_pickling(sft_dir, tmp_path):
    _, out = sft_dir
    ds = SFTDataset(out)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._maps is None and clone.example(-1)[0].tolist() == ds.example(len(ds) - 1)[0].tolist()
    with pytest.raises(IndexError):
        ds.example(len(ds))
    with pytest.raises(ValueError, match="not 'dpo'"):
        DPODataset(out)
    with pytest.raises(ValueError, match="pretokenize_sft"):
        SFTDataset(tmp_path)
    with pytest.raises(ValueError, match="vocab_size"):
        SFTDataset(out, vocab_size=10)


def _per_example_losses(model, batch):
    """Sum of token losses per segment of a batch (segments: cu_seqlens, or one per row)."""
    out = model(batch.input_ids, position_ids=batch.position_ids, cu_seqlens=batch.cu_seqlens,
                max_seqlen=batch.max_seqlen, return_logits=True)
    ce = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1).float(), batch.targets.flatten(),
                                           ignore_index=IGNORE_INDEX, reduction="none")
    T = batch.input_ids.shape[1]
    cu = batch.cu_seqlens.tolist() if batch.cu_seqlens is not None else list(range(0, ce.numel() + 1, T))
    return torch.stack([ce[s:e].sum() for s, e in zip(cu, cu[1:])])


@pytest.mark.parametrize("attn_impl", ["torch", "sdpa"])
def test_packed_equals_unpacked_losses_and_grads(sft_dir, attn_impl):
    """fp32 CPU: the per-conversation losses and the gradients of a packed batch equal those of the same
    conversations one per row, which shows that no attention crosses a conversation."""
    tok, out = sft_dir
    ds = SFTDataset(out)
    torch.manual_seed(0)
    cfg = Z2allConfig(vocab_size=tok.model_vocab_size, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      max_seq_len=SEQ, multiple_of=32, attn_impl=attn_impl)
    model = Z2allForCausalLM(cfg)
    rows = pack_examples(ds.lengths, SEQ, np.arange(len(ds)))[:3]
    row_items = [[ds[int(i)] for i in r] for r in rows]
    packed = collate_packed(row_items, SEQ, ds.pad_id)
    examples = [item for row in row_items for item in row]
    padded = collate_padded(examples, ds.pad_id)
    is_example = []  # the segments of the packed batch: its examples, and a padding segment per unfilled row
    for row in row_items:
        is_example += [True] * len(row) + ([False] if sum(len(ids) for ids, _ in row) < SEQ else [])
    assert len(row_items[0]) > 1 and len(examples) > len(row_items)  # some rows really hold several examples
    losses_p = _per_example_losses(model, packed)[torch.tensor(is_example)]
    losses_u = _per_example_losses(model, padded)
    assert (losses_u > 0).all() and torch.allclose(losses_p, losses_u, atol=1e-5, rtol=1e-5)
    grads = []
    for batch in (packed, padded):
        model.zero_grad()
        model(batch.input_ids, targets=batch.targets, position_ids=batch.position_ids, cu_seqlens=batch.cu_seqlens,
              max_seqlen=batch.max_seqlen, loss_reduction="sum").loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for gp, gu in zip(*grads):
        assert torch.allclose(gp, gu, atol=1e-5, rtol=1e-4)
