"""The floor: errors, atomic writes, safe checkpoint reads, image reading, config helpers."""
