"""Framework glue for LatentBridge: errors, atomic IO, bitstream CLI, evaluation helpers."""

import warnings

# A dependency scripts a function with torch.jit at import time, which prints a FutureWarning on every command;
# our command-line tools should print only their own messages.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
