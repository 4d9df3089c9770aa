"""LatentBridge: neural image codecs and transform-necks that let multimodal LLMs read compressed latents.

Layers, each importing only those below it (tests/test_structure.py checks this):
core -> codecs, vision, nn -> losses -> metrics -> routes -> (datamodules, lightning_modules) -> runs -> analysis
-> mllm -> workflows -> cli.
"""

import warnings

# A dependency scripts a function with torch.jit at import time, which prints a FutureWarning on every command;
# our command-line tools should print only their own messages.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
