"""nn building blocks: codec adapters, vision encoder adapter, transform-neck, losses."""
