"""replearn's optimizers: torch.optim's, with every step one native pass over memory.

Each optimizer subclasses its torch.optim counterpart (same constructor arguments, param groups,
state_dict layout, lr_scheduler support) and replaces `step` with one native multi-tensor call per
(device, dtype) bucket of each param group (csrc/optim). AdaBound/AMSBound (Luo et al. 2019) have no
torch counterpart; they keep Adam's state names. `clip_grad_norm_` and `clip_grad_value_` mirror
torch.nn.utils'.
"""

from .adabound import AdaBound, AMSBound
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .clip import clip_grad_norm_, clip_grad_value_
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["AMSBound", "AdaBound", "Adagrad", "Adam", "AdamW", "RMSprop", "SGD", "clip_grad_norm_", "clip_grad_value_"]
