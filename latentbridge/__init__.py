"""Framework glue for LatentBridge: errors, atomic IO and preparation of cached assets."""
