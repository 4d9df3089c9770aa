"""Metrics: zero-shot and 5-way 1-shot accuracy, image quality, the MAC counter."""
