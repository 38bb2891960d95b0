"""The main job end to end on data shipped with Python or an installed package (application layer).

:mod:`symmetries.demo.data` loads the bundled digits, :mod:`symmetries.demo.text` the Python
standard library's own source as character-level text; :mod:`symmetries.demo.run` trains two
MLPs, :mod:`symmetries.demo.transformer` two GPTs or ViTs, aligns them with every applicable
solver and measures the interpolation path.
"""
from symmetries.demo.data import Split, digits
from symmetries.demo.run import DemoConfig, DemoResult, Row, run_demo, train_classifier, train_posterior
from symmetries.demo.transformer import TransformerConfig, TransformerDemoResult, demo_config, run_transformer_demo

__all__ = ["DemoConfig", "DemoResult", "Row", "run_demo", "train_classifier", "train_posterior", "Split", "digits",
           "TransformerConfig", "TransformerDemoResult", "demo_config", "run_transformer_demo"]
