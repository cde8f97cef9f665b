"""Exceptions raised by diffgemma_cpp.

Each C status code maps to one exception class; the message is the C library's reason (with its hint).
"""


class DiffGemmaError(RuntimeError):
    """Base class of every error raised by diffgemma_cpp."""

    status = None  # the C status code, where one applies


class InvalidArgumentError(DiffGemmaError, ValueError):
    """A bad argument (NULL handle, value out of range, wrong shape)."""


class ImageError(InvalidArgumentError):
    """An image we refuse: not decodable, too many pixels, a remote URL (we never fetch), or sent to a model
    without a vision projector."""


class VisionDependencyError(DiffGemmaError, ImportError):
    """An image format that needs Pillow, which is not installed (``pip install "diffgemma-cpp[vision]"``)."""


class ModelFileError(DiffGemmaError, OSError):
    """A file is missing, unreadable or unwritable (including a full disk)."""


class ModelLoadError(DiffGemmaError):
    """A file is not a valid GGUF: corrupt, truncated or inconsistent."""


class UnsupportedModelError(ModelLoadError):
    """A valid GGUF that is not a DiffusionGemma model we can run (other arch, missing/misshapen tensor)."""


class UnsupportedTypeError(ModelLoadError):
    """A tensor or quantization type we cannot run or produce."""


class OutOfMemoryError(DiffGemmaError, MemoryError):
    """An allocation failed."""


class ContextOverflowError(DiffGemmaError):
    """The prompt plus the requested canvases do not fit the context."""


class Cancelled(DiffGemmaError):
    """Generation was stopped by Model.cancel() (or Ctrl-C)."""


class BackendError(DiffGemmaError):
    """A compute backend failed or is not available."""


class ModelBusyError(DiffGemmaError):
    """The model is already running a call in another thread (see the thread contract in Model's docs)."""


class BufferTooSmallError(DiffGemmaError):
    """An output buffer was too small (internal: the bindings size buffers themselves)."""


class InternalError(DiffGemmaError):
    """A bug in diffgemma_cpp: please report it with the message."""


# C status name -> exception class. The names are the enum names of diffgemma.h.
STATUS_EXCEPTIONS = {
    "DIFFGEMMA_ERR_INVALID_ARGUMENT": InvalidArgumentError,
    "DIFFGEMMA_ERR_IO": ModelFileError,
    "DIFFGEMMA_ERR_BAD_FORMAT": ModelLoadError,
    "DIFFGEMMA_ERR_UNSUPPORTED_MODEL": UnsupportedModelError,
    "DIFFGEMMA_ERR_UNSUPPORTED_TYPE": UnsupportedTypeError,
    "DIFFGEMMA_ERR_OUT_OF_MEMORY": OutOfMemoryError,
    "DIFFGEMMA_ERR_CONTEXT_OVERFLOW": ContextOverflowError,
    "DIFFGEMMA_ERR_CANCELLED": Cancelled,
    "DIFFGEMMA_ERR_BACKEND": BackendError,
    "DIFFGEMMA_ERR_BUSY": ModelBusyError,
    "DIFFGEMMA_ERR_BUFFER_TOO_SMALL": BufferTooSmallError,
    "DIFFGEMMA_ERR_INTERNAL": InternalError,
}
