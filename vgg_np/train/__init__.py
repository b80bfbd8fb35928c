"""Training a VGG: a training step (`vgg_np.train.step`) and what is built on it.

`fit` (`vgg_np.train.fit`) fine-tunes a VGG on a folder of class subfolders, as Keras's
``image_dataset_from_directory`` + ``model.fit`` do, and writes a model file every path
of vgg_np reads.
"""

from vgg_np.train.fit import History, fit
from vgg_np.train.step import SGD, SHAPES, Tape, loss_and_gradients, shapes_dataset

__all__ = ["SGD", "SHAPES", "History", "Tape", "fit", "loss_and_gradients", "shapes_dataset"]
