"""moire_al.analysis: what users do with a fitted model (relaxation and moiré
structure, binding curves, stress-strain, phonons, NEB, defects, comparison).

Every analysis is a plain function taking any ASE calculator and returning a
JSON-friendly dict; plotting lives in :mod:`moire_al.analysis.plots`.
Import the submodules directly (``from moire_al.analysis.moire import ...``).
"""
