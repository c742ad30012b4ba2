"""Showing concepts: image grids, training curves and the HTML report."""

from daskdict.report.html import plot_atom_grid, plot_training_curve, write_report

__all__ = ["plot_atom_grid", "plot_training_curve", "write_report"]
