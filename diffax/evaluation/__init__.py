"""Evaluation outputs that are pure functions of arrays: PNG grids of image samples and scatter plots of 2-D ones
(`grid`). Evaluation never imports a mode."""
