"""MLLM rate-accuracy with lmms-eval tasks answered by LLaVA-1.5 (paper 4.1-4.2).

Thin shim over ``latentbridge-mllm-evaluate`` (latentbridge/cli/commands.py).
"""

from latentbridge.cli.commands import mllm_evaluate

if __name__ == "__main__":
    mllm_evaluate()
