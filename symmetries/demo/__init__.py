"""The main job end to end on data shipped with an installed package (application layer).

:mod:`symmetries.demo.data` loads the bundled digits; :mod:`symmetries.demo.run` trains two
networks, aligns them with every applicable solver and measures the interpolation path.
"""
from symmetries.demo.data import Split, digits
from symmetries.demo.run import DemoConfig, DemoResult, Row, run_demo, train_classifier, train_posterior

__all__ = ["DemoConfig", "DemoResult", "Row", "run_demo", "train_classifier", "train_posterior", "Split", "digits"]
