"""architectures — declaring networks as weight graphs.

``WeightGraph`` (a networkx graph of parameters and spaces), ``Architecture`` (a graph
plus the torch module it describes) and builders such as :func:`mlp`.
"""
from architectures.activations import (ACTIVATIONS, Activation, UnknownActivationError, activation,
                                       builder_activations, representative_activations)
from architectures.architecture import Architecture, ExampleInputsError
from symmetries.graph import Edge, Parameter, Space, WeightGraph
from architectures.mlp import MLP, mlp
from architectures.equivalence import assert_graphs_equivalent, graph_difference, graphs_equivalent
from architectures.extract import TRACE, Context, ExtractionError, RuleError, from_module, register_rule, unregister_rule
from architectures.cnn import VGG, VGG_CONFIGS, vgg
from architectures.gcn import GCN, gcn, normalized_adjacency
from architectures.resnet import ResNet, resnet

__all__ = ["WeightGraph", "Parameter", "Space", "Edge", "Architecture", "ExampleInputsError", "mlp", "MLP", "ACTIVATIONS",
           "Activation", "activation", "builder_activations", "representative_activations", "UnknownActivationError"]
__all__ += ["vgg", "VGG", "VGG_CONFIGS", "resnet", "ResNet", "gcn", "GCN", "normalized_adjacency"]
__all__ += ["from_module", "ExtractionError", "register_rule", "unregister_rule", "RuleError", "TRACE", "Context", "graphs_equivalent", "assert_graphs_equivalent", "graph_difference"]
from architectures.transformer import RESIDUAL, gpt2, rebuild, vit
from architectures.layernorm import rewrite_layernorm
from architectures.hf_gpt2 import hf_gpt2, hf_gpt2_config, hf_to_gpt2  # imports transformers only when called

__all__ += ["gpt2", "vit", "rebuild", "RESIDUAL", "rewrite_layernorm", "hf_gpt2", "hf_gpt2_config", "hf_to_gpt2"]
from architectures.llama import fold_rmsnorm, llama
from architectures.hf_llama import hf_llama, hf_llama_config  # imports transformers only when called

__all__ += ["llama", "fold_rmsnorm", "hf_llama", "hf_llama_config"]
from architectures.hf import from_hf, hf_example_inputs  # torch.export; never imports transformers

__all__ += ["from_hf", "hf_example_inputs"]

#: The builders: networks from sizes and options (what ``--arch NAME:ARGS`` may name).
BUILDERS = ("mlp", "vgg", "resnet", "gcn", "gpt2", "vit", "hf_gpt2", "llama", "hf_llama")
__all__ += ["BUILDERS"]
