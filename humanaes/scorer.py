"""The scorer interface every model family implements, and the batching it shares.

A scorer turns images into ScoreResults. Subclasses provide per-image preparation (decode is
done here) and a batched forward; this class handles modes, batching, order, and turning bad
items into error results so one unreadable file never sinks a batch.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

from PIL import Image

from humanaes.errors import HumanAesError, ImageLoadError
from humanaes.hints import hint
from humanaes.io.images import ImageSource, load_image, source_name
from humanaes.options import ScoreOptions, describe_options, model_options, parse_options
from humanaes.schema import SCORE_MODES, ScoreResult

logger = logging.getLogger(__name__)


class Preprocessor:
    """Decoding + preparation of one image for one model family, apart from the model.

    It holds only what those two steps need (tiling settings, a small face detector), never the
    model's weights, and pickles: `humanaes batch --engine ray` runs it in CPU tasks and sends
    the prepared inputs to the model actors, and `BaseScorer.score` runs the very same object in
    process, so both give identical inputs. `__call__` returns the family's prepared input
    (tensors) or raises ImageLoadError / HumanAesError naming the cause.
    """

    def __call__(self, source: ImageSource, name: str, options: Any) -> Any:
        """`options`: the scorer's typed ScoreOptions (apply_exif, max_pixels, the family's own)."""
        raise NotImplementedError

    def decode(self, source: ImageSource, name: str, options: ScoreOptions) -> Image.Image:
        """Decode one source to RGB with the decoding options (see `decode_source`)."""
        return decode_source(source, name, options)


def decode_source(source: ImageSource, name: str, options: ScoreOptions) -> Image.Image:
    """Decode one source to RGB: the one place that applies the decoding options (EXIF, pixel
    limit), for scorers (`BaseScorer.decode`) and preprocessors (`Preprocessor.decode`) alike."""
    return load_image(source, apply_exif=options.apply_exif, max_pixels=options.max_pixels, name=name)


class BaseScorer(abc.ABC):
    """Common driver: `score()` / `iter_score()` over any iterable of image sources."""

    #: short name shown in listings and output rows
    name: str = "scorer"
    #: the modes this scorer can run, a subset of schema.SCORE_MODES
    supported_modes: tuple[str, ...] = SCORE_MODES
    default_mode: str = "fast"
    #: the default of the `apply_exif` option (False = official behaviour); `load(apply_exif=)` sets it
    apply_exif: bool = True
    #: the options `score()` / `iter_score()` take (see humanaes.options); a family subclasses ScoreOptions
    options_class: ClassVar[type[ScoreOptions]] = ScoreOptions
    #: the text tokenizer of language-model scorers; None for models without one (the bundled
    #: CNN), so `save_checkpoint(scorer.model, ..., tokenizer=scorer.tokenizer)` fails with a
    #: clear error about the model instead of an AttributeError
    tokenizer: Any = None

    def check_mode(self, mode: str | None) -> str:
        mode = mode or self.default_mode
        if mode not in SCORE_MODES:
            raise HumanAesError(f"unknown mode {mode!r}; choose one of: {', '.join(SCORE_MODES)}")
        if mode not in self.supported_modes:
            use = hint(api="load a HumanAesExpert checkpoint with humanaes.load(folder or hub id)",
                       cli="pass --model with a HumanAesExpert checkpoint")
            raise HumanAesError(
                f"mode {mode!r} is not available with model {self.name!r} "
                f"(it supports: {', '.join(self.supported_modes)}); {use}"
            )
        return mode

    def check_call(self, mode: str | None, **options: Any) -> tuple[str, ScoreOptions]:
        """The mode and typed options of a scoring call, checked together before any image is
        read: an unknown mode or option, an ill-typed value, or a setting that has no effect in
        the mode (`ScoreOptions.check_mode`) is a HumanAesError."""
        mode = self.check_mode(mode)
        typed = self.parse_options(**options)
        typed.check_mode(mode)
        return mode, typed

    def parse_options(self, **values: Any) -> ScoreOptions:
        """Validate scoring options into this scorer's `options_class` (unset ones take their
        defaults). Raises HumanAesError naming an option this model cannot use or an ill-typed one."""
        return parse_options(
            self.options_class, values, defaults={"apply_exif": self.apply_exif}, owner=f"model {self.name!r}"
        )

    def options_schema(self) -> list[dict[str, Any]]:
        """The options this scorer takes, as plain data (name, type, default, help, bounds)."""
        return describe_options(self.options_class)

    def score(
        self,
        images: ImageSource | Iterable[ImageSource],
        *,
        mode: str | None = None,
        batch_size: int = 8,
        **options: Any,
    ) -> list[ScoreResult]:
        """Score images; returns one ScoreResult per input, in input order."""
        if isinstance(images, (str, bytes, bytearray, Image.Image)) or hasattr(images, "read") or hasattr(
            images, "__fspath__"
        ):
            images = [images]  # a single source
        return list(self.iter_score(images, mode=mode, batch_size=batch_size, **options))

    def iter_score(
        self,
        images: Iterable[ImageSource],
        *,
        mode: str | None = None,
        batch_size: int = 8,
        names: Sequence[str] | None = None,
        **options: Any,
    ) -> Iterator[ScoreResult]:
        """Yield results in input order, one batch at a time (for streaming writers).

        The mode, batch size and options are checked at the call, before any image is read."""
        mode, typed = self.check_call(mode, **options)
        if batch_size < 1:
            raise HumanAesError(f"batch_size must be at least 1, got {batch_size}")
        return self._iterate(images, mode, batch_size, names, typed)

    def _iterate(
        self, images: Iterable[ImageSource], mode: str, batch_size: int, names: Sequence[str] | None, options: ScoreOptions
    ) -> Iterator[ScoreResult]:
        batch: list[tuple[str, ImageSource]] = []
        for index, source in enumerate(images):
            name = names[index] if names is not None else source_name(source, index)
            batch.append((name, source))
            if len(batch) == batch_size:
                yield from self._run_batch(batch, mode, options)
                batch = []
        if batch:
            yield from self._run_batch(batch, mode, options)

    # -- subclass hooks -------------------------------------------------------------------

    def decode(self, source: ImageSource, name: str, options: ScoreOptions) -> Image.Image:
        """Decode one source to RGB (`decode_source`); a family may override it to open sources
        its own way, then call this."""
        return decode_source(source, name, options)

    @abc.abstractmethod
    def prepare(self, image: Image.Image, **options: Any) -> Any:
        """Turn one decoded RGB image into model input (e.g. a tile tensor)."""

    @abc.abstractmethod
    def score_prepared(
        self, prepared: list[Any], names: list[str], mode: str, **options: Any
    ) -> list[ScoreResult]:
        """Score a batch of prepared inputs; one result per input, same order."""

    def describe(self) -> dict[str, Any]:
        """What `humanaes models` prints about this scorer."""
        return {"name": self.name, "modes": list(self.supported_modes)}

    def preprocessor(self) -> Preprocessor | None:
        """This scorer's decoding + preparation as a picklable object without the model's
        weights (see `Preprocessor` above), or None when the family's
        `decode` / `prepare` hooks must run with the scorer itself (then `humanaes batch` runs
        them in its model actors). Families return one only while those hooks are their own."""
        return None

    def _hooks_are_from(self, owner: type[BaseScorer]) -> bool:
        """Whether this scorer's `decode` and `prepare` are still `owner`'s: a family's
        `preprocessor()` returns its object only then (a subclass's own hooks run with it)."""
        cls = type(self)
        return cls.decode is owner.decode and cls.prepare is owner.prepare

    def prepare_source(self, source: ImageSource, name: str, options: ScoreOptions) -> Any:
        """Decode + prepare one source exactly as `score()` does (typed `options`); raises
        ImageLoadError / HumanAesError for a bad item."""
        preprocessor = self.preprocessor()
        if preprocessor is not None:
            return preprocessor(source, name, options)
        return self.prepare(self.decode(source, name, options), **model_options(options))

    def score_prepared_batch(
        self, prepared: list[Any], names: list[str], *, mode: str | None = None, **options: Any
    ) -> list[ScoreResult]:
        """Score inputs prepared elsewhere (by `preprocessor()`, e.g. in other processes): one
        result per input, in order. A batch whose forward fails is retried item by item, so only
        the offending item becomes an error result, as in `score()`."""
        if len(prepared) != len(names):
            raise HumanAesError(f"{len(prepared)} prepared inputs but {len(names)} names")
        mode, typed = self.check_call(mode, **options)
        if not prepared:
            return []
        return self._score_ready([(i, n, p) for i, (n, p) in enumerate(zip(names, prepared))], mode, model_options(typed))

    # -- driver ---------------------------------------------------------------------------

    def _run_batch(
        self, batch: list[tuple[str, ImageSource]], mode: str, typed: ScoreOptions
    ) -> list[ScoreResult]:
        results, ready = prepare_items(self.prepare_source, batch, typed)
        if ready:
            for (i, _, _), result in zip(ready, self._score_ready(ready, mode, model_options(typed))):
                results[i] = result
        return [r for r in results if r is not None]

    def _score_ready(
        self, ready: list[tuple[int, str, Any]], mode: str, options: dict[str, Any]
    ) -> list[ScoreResult]:
        names = [name for _, name, _ in ready]
        prepared = [p for _, _, p in ready]
        try:
            return self.score_prepared(prepared, names, mode, **options)
        except HumanAesError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing batch must not lose the others
            if len(ready) == 1:
                logger.debug("scoring %s failed", names[0], exc_info=True)
                return [ScoreResult.failed(names[0], f"{names[0]}: scoring failed ({type(exc).__name__}: {exc})")]
            # Retry one by one so only the offending item carries the error.
            logger.warning("batch failed (%s: %s); retrying its %d items one by one", type(exc).__name__, exc, len(ready))
            out: list[ScoreResult] = []
            for item in ready:
                out.extend(self._score_ready([item], mode, options))
            return out


def prepare_items(
    prepare: Any, batch: list[tuple[str, ImageSource]], options: ScoreOptions
) -> tuple[list[ScoreResult | None], list[tuple[int, str, Any]]]:
    """Run `prepare(source, name, options)` (a Preprocessor or `BaseScorer.prepare_source`) on
    each (name, source): error results for the items it refuses, (index, name, prepared) for the
    rest. The one place that turns a bad item into its error message, in process and in the
    CPU tasks of `humanaes batch` alike."""
    results: list[ScoreResult | None] = [None] * len(batch)
    ready: list[tuple[int, str, Any]] = []
    for i, (name, source) in enumerate(batch):
        try:
            ready.append((i, name, prepare(source, name, options)))
        except ImageLoadError as exc:
            results[i] = ScoreResult.failed(name, str(exc))
        except HumanAesError as exc:
            results[i] = ScoreResult.failed(name, f"{name}: {exc}")
    return results, ready
