"""Evaluation: certificates, the attack suite, and the soundness gate.

Submodules: ``certify`` (radius formulas), ``certification`` (certify a model),
``attacks`` (foolbox + AutoAttack suite, certificate pruning), ``verification`` (the gate)
and ``run`` (the DVC stages). Import them directly; this package imports nothing heavy.
"""
