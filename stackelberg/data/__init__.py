"""Datasets: image folders (extracted or archived) and scikit-learn's bundled sets."""

from stackelberg.data.folders import ImageDataset, load_image_folder, load_image_splits

__all__ = ["ImageDataset", "load_image_folder", "load_image_splits"]
