"""z2all model: `from model import Z2allConfig, Z2allForCausalLM`."""
from model.config import Z2allConfig
from model.modeling import Z2allForCausalLM, Z2allOutput

__all__ = ["Z2allConfig", "Z2allForCausalLM", "Z2allOutput"]
