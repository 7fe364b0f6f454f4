"""Golden vectors: generation (:func:`generate`) and verification (:func:`verify`) of the
language-neutral JSON corpus in ``vectors/`` (docs/vectors.md).

Sits above the codecs and the conformance catalog (it classifies findings by clause level);
nothing below imports it.
"""

from .generate import GenerationError, generate, render_all

__all__ = ["GenerationError", "generate", "render_all"]
