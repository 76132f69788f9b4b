"""surplus: solar-surplus charging controller for MENNEKES AMTRON wallboxes."""

__version__ = "0.1.0"
