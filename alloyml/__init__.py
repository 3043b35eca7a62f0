"""alloyml: which training data is worth keeping, how to combine the models you have, how to tune and
serve the result — with every step recorded in one metadata store.

Importing the top-level package is cheap on purpose: heavy libraries (torch, ray, mergekit) are imported
only by the modules that use them, so `alloyml --help` answers at once.
"""

from alloyml.errors import AlloyError

__version__ = "0.1.0"
__all__ = ["AlloyError", "__version__"]
