"""Rate-accuracy evaluation of trained runs through real bitstreams (paper 4.2, Fig. 3-4, A.1-A.2).

Thin shim over ``latentbridge-evaluate`` (latentbridge/cli/commands.py).
"""

from latentbridge.cli.commands import evaluate

if __name__ == "__main__":
    evaluate()
