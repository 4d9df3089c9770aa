"""Trainable blocks: the transform-neck (paper 3.3) and the Post-processing U-Net (4.1)."""
