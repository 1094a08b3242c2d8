"""Figures: training curves, sweeps, confusion matrices, costs, interpretability.

Every figure is built without pyplot's global state, carries alt text and is saved by
`_figure.save_figure`. Notebooks import the modules by role: `charts`, `classes`, `cost`,
`interpret`.
"""
