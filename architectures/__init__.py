"""architectures — declaring networks as weight graphs.

``WeightGraph`` (a networkx graph of parameters and spaces), ``Architecture`` (a graph
plus the torch module it describes) and builders such as :func:`mlp`.
"""
from .activations import ACTIVATIONS, Activation, activation
from .architecture import Architecture
from .graph import Edge, Parameter, Space, WeightGraph
from .mlp import MLP, mlp
from .equivalence import assert_graphs_equivalent, graph_difference, graphs_equivalent
from .extract import ExtractionError, from_module
from .cnn import VGG, VGG_CONFIGS, vgg
from .gcn import GCN, gcn, normalized_adjacency
from .resnet import ResNet, resnet

__all__ = ["WeightGraph", "Parameter", "Space", "Edge", "Architecture", "mlp", "MLP", "ACTIVATIONS",
           "Activation", "activation"]
__all__ += ["vgg", "VGG", "VGG_CONFIGS", "resnet", "ResNet", "gcn", "GCN", "normalized_adjacency"]
__all__ += ["from_module", "ExtractionError", "graphs_equivalent", "assert_graphs_equivalent", "graph_difference"]
