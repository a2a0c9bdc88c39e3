"""The .cca container: chunks, header, tile payloads, and how an image is cut into tiles."""
