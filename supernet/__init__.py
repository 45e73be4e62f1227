"""The weight-sharing supernet: the model, its standalone subnets, and FLOP counting."""

from .flops import count_flops
from .model import Block, InputError, Supernet
from .subnet import Subnet, extract_subnet, load_subnet, save_subnet

__all__ = ["Block", "InputError", "Subnet", "Supernet", "count_flops", "extract_subnet", "load_subnet", "save_subnet"]
