"""Every parameter's values are read only inside a call of a module that owns it.

ZeRO-1's overlapped param gather (parallel/ddp.py) lets the next forward start while the other ranks' shards of the
weights are still arriving: a forward pre-hook waits for a module's weights just before that module runs. A forward
that reads a weight anywhere else (the loss taking `lm_head.weight` from the model's forward did) computes with the
shards of the step before on every rank: no error, only a loss that drifts from the one-process run. This holds
the model to the contract on every forward path it has, with a torch-function mode that sees each op's arguments.
"""
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from model import Z2allConfig, Z2allForCausalLM

# reads of a tensor's metadata, not of its values: harmless before the gather lands
METADATA = {"size", "dim", "numel", "data_ptr", "stride", "is_contiguous", "element_size", "storage_offset",
            "untyped_storage", "_version", "requires_grad_", "__get__"}


class ParamReads(TorchFunctionMode):
    """Records (parameter name, op) for every op that takes a parameter while none of its owners is running."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.owners: dict[int, set[int]] = {}
        for m in model.modules():
            for p in m.parameters(recurse=False):
                self.owners.setdefault(id(p), set()).add(id(m))
        self.running: list[int] = []
        self.outside: list[tuple[str, str]] = []
        self.inside = 0
        self._handles = []
        for m in model.modules():
            self._handles.append(m.register_forward_pre_hook(lambda mod, args: self.running.append(id(mod))))
            self._handles.append(m.register_forward_hook(self._left))

    def _left(self, module, args, out) -> None:
        self.running.pop()  # returns None: a forward hook's return value would replace the module's output

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in METADATA:
            for t in tree_flatten((args, kwargs))[0]:
                if isinstance(t, nn.Parameter) and id(t) in self.owners:
                    if self.owners[id(t)] & set(self.running):
                        self.inside += 1
                    else:
                        self.outside.append((self.names[id(t)], getattr(func, "__name__", str(func))))
        return func(*args, **kwargs)


def _model(**kw) -> Z2allForCausalLM:
    torch.manual_seed(0)
    shape = dict(vocab_size=96, hidden_dim=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=48,
                 max_seq_len=16)
    return Z2allForCausalLM(Z2allConfig(**{**shape, **kw}))


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 96, (2, 12), generator=g)
    return x, torch.randint(0, 96, (2, 12), generator=g)


CASES = {
    "loss": (dict(), dict(targets=True)),
    "per-token loss (DPO)": (dict(), dict(targets=True, loss_reduction="none")),
    "logits": (dict(), dict()),
    "loss and logits, tied embeddings": (dict(tie_word_embeddings=True), dict(targets=True, return_logits=True)),
    "packed documents": (dict(), dict(targets=True, cu_seqlens=torch.tensor([0, 5, 12, 24], dtype=torch.int32))),
    "full recompute": (dict(activation_checkpointing="full"), dict(targets=True)),
    "selective recompute": (dict(activation_checkpointing="selective"), dict(targets=True)),
    "fp8": (dict(fp8="rowwise"), dict(targets=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_parameter_is_read_inside_a_module_that_owns_it(case):
    config, call = CASES[case]
    model = _model(**config)
    x, t = _inputs()
    kwargs = {k: (t if k == "targets" else v) for k, v in call.items()}
    reads = ParamReads(model)
    try:
        with reads:
            out = model(x, **kwargs)
    finally:
        reads.remove_hooks()
    assert out.loss is not None or out.logits is not None
    # every parameter was read at least once, so the check saw the whole forward
    assert reads.inside >= len(list(model.parameters())), reads.inside
    assert not reads.outside, f"read outside their module's call (no ZeRO-1 gather wait): {reads.outside}"


def test_the_check_sees_a_read_outside_the_owner():
    """The mode is not blind: the loss computed from lm_head.weight in a bare call is reported."""
    import model.ops as ops
    model = _model()
    x, t = _inputs()
    reads = ParamReads(model)
    try:
        with reads:
            hidden = model.hidden_states(x)
            ops.fused_linear_cross_entropy(hidden.reshape(-1, 32), model.lm_head.weight, t.reshape(-1))
    finally:
        reads.remove_hooks()
    assert {name for name, _ in reads.outside} == {"lm_head.weight"}
