"""Evaluation: sample generation from trained parameters, PNG grids and scatter plots, held-out metrics."""
