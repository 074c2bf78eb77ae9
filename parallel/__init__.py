"""Data parallelism: DistContext, the param-and-grad buffer, the hand-written DDP and its comm hooks."""
from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel
from parallel.dist import DistContext, destroy, init_distributed
from parallel.param_and_grad_buffer import Bucket, ParamAndGradBuffer

__all__ = ["Bucket", "DDPConfig", "DistContext", "DistributedDataParallel", "ParamAndGradBuffer", "destroy",
           "init_distributed"]
