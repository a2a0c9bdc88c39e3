"""The CCA network: building blocks, transforms, channel/spatial context model, auxiliary model and loss."""
