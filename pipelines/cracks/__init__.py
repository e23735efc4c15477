"""Crack segmentation (U-Net, tiling, threshold baseline), particle mask and damage maps."""
