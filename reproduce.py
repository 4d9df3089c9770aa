"""Reproduce a plan of paper 1's figures and findings: train, evaluate, plot, check.

Thin shim over ``latentbridge-reproduce`` (latentbridge/cli/commands.py).
"""

from latentbridge.cli.commands import reproduce

if __name__ == "__main__":
    reproduce()
