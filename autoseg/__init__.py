"""autoseg: self-configuring U-Net segmentation for spine and skeleton imaging."""
__version__ = "0.1.0"
