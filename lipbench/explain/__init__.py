"""Explanation properties of (1-Lipschitz) classifiers: saliency maps, their faithfulness,
stability and concision, and their alignment with the transport plan (Serrurier et al.,
NeurIPS 2023). Floor: between :mod:`lipbench.evaluate` and :mod:`lipbench.report`."""
