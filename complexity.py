"""Complexity report (paper 4.4, Table 3): params and kMAC/pixel of the server-side parts.

Thin shim over ``latentbridge-complexity`` (latentbridge/cli/commands.py).
"""

from latentbridge.cli.commands import complexity

if __name__ == "__main__":
    complexity()
