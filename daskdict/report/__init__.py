"""Showing concepts: image grids, training curves and the HTML reports (of concepts, and of
which model components carry which feature)."""

from daskdict.report.components import write_components_report
from daskdict.report.html import plot_atom_grid, plot_training_curve, write_report

__all__ = ["plot_atom_grid", "plot_training_curve", "write_components_report", "write_report"]
