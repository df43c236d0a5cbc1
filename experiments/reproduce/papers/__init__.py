"""Registration modules, one per paper: each calls :func:`experiments.reproduce.register` at import.

Every module in this folder is imported by :func:`experiments.reproduce.registry.load_papers`; a new paper
joins ``gpusched reproduce`` by adding its module here (see :mod:`experiments.reproduce.example` for the shape).
"""
