"""One LightningModule per scenario or baseline, sharing ``BridgeModule``; plus the pre-training modules."""
