"""Train a LatentBridge model: ``latentbridge-train`` (latentbridge/cli/commands.py)."""

from latentbridge.cli.commands import train

if __name__ == "__main__":
    train()
