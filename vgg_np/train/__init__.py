"""Training a VGG: a training step (`vgg_np.train.step`) and what is built on it."""

from vgg_np.train.step import SGD, SHAPES, Tape, loss_and_gradients, shapes_dataset

__all__ = ["SGD", "SHAPES", "Tape", "loss_and_gradients", "shapes_dataset"]
