"""MLLMs (paper 4.1): LLaVA-1.5 reading the neck's tokens, the lmms-eval model, a tiny offline LLaVA."""
