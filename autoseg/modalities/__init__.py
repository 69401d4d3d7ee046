"""Modality physics with no task knowledge (X-ray dose, image quality); tasks and phantoms build on it."""
