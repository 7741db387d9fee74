"""Evaluation: certificates, the attack suite, and the soundness gate.

Submodules: ``certify`` (radius formulas), ``certification`` (certify a model),
``attacks`` (foolbox + AutoAttack suite, certificate pruning), ``verification`` (the gate),
``settings`` (a profile's evaluation settings), ``run`` (the DVC stages) and ``external``
(externally trained checkpoints). Import them directly; this package imports nothing heavy.
"""
