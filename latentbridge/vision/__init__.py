"""Vision encoders C (paper 3.3-3.4): open_clip and Hugging Face CLIP behind one interface, in named steps."""
