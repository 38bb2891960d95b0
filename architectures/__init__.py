"""architectures — declaring networks as weight graphs.

``WeightGraph`` (a networkx graph of parameters and spaces), ``Architecture`` (a graph
plus the torch module it describes) and builders such as :func:`mlp`.
"""
from .activations import ACTIVATIONS, Activation, activation
from .architecture import Architecture
from .graph import Edge, Parameter, Space, WeightGraph
from .mlp import MLP, mlp

__all__ = ["WeightGraph", "Parameter", "Space", "Edge", "Architecture", "mlp", "MLP", "ACTIVATIONS",
           "Activation", "activation"]
