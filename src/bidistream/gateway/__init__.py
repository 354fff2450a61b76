"""gateway layer of bidistream (see ../shared/DESIGN.md)."""
