"""The options objects: :class:`SegmentOptions` (a segmentation) and
:class:`CorrectOptions` (a mask correction).

Every way into the plugin -- the napari widget, the ``vptv`` command line, the
batch engine and the Python API (:func:`napari_vptv.api.segment_image`) -- turns
its settings into one :class:`SegmentOptions`. The object is frozen and checked
once, when it is made, so a bad setting is reported before any image is read.

No napari, Qt or torch imports here (cheap to import from the widget's module).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .core.correct import settings as correct_settings
from .core.correct.settings import CorrectSettings
from .core.solver.volumes import VOLUME_MODES, make_volume_spec
from .presets import CELL_RULES, DEFAULT_METHOD, METHOD_NAMES, NETWORKS, PRESET_NAMES

__all__ = [
    "METHODS",
    "NETWORK_METHODS",
    "PRESETS",
    "RANGES",
    "OptionError",
    "SegmentOptions",
    "CorrectOptions",
    "check_range",
]

#: Segmentation methods: ``"auto"`` and the named methods it resolves to
#: (:mod:`napari_vptv.presets`).
METHODS = METHOD_NAMES
#: test-time augmentation settings: transforms averaged (nn.predict.AUGMENT_CHOICES;
#: kept here so the options need no torch)
AUGMENT_CHOICES = (1, 2, 8)
#: The methods that run a shipped network (their names are also the model names).
NETWORK_METHODS = ("unet", "vptv-unet")
#: Presets of the variational solver (:data:`napari_vptv.presets.PRESET_NAMES`).
PRESETS = PRESET_NAMES

_Floats = Optional[Tuple[float, ...]]

#: Accepted ranges ``(low, high)`` (inclusive) of the numeric settings. Outside
#: them the solver under- or overflows (``epsilon`` 1e-40 or 1e300 gives NaN
#: probabilities), or the run cannot be meant (a 10^6-class segmentation).
#: The widget's spin boxes use the same bounds or narrower ones.
RANGES: Dict[str, Tuple[float, float]] = {
    "epsilon": (1e-4, 100.0),
    "tv_weight": (0.0, 100.0),
    "max_num_iter": (1, 100_000),
    "n_classes": (2, 255),
    "seed": (0, 2**32 - 1),
    "diameter": (0.0, 100_000.0),
}


class OptionError(ValueError):
    """A bad setting; ``field`` is the :class:`SegmentOptions` field it is about.

    Front-ends re-word the message in their own terms (the CLI names ``--epsilon``
    where the API names ``epsilon``).
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _float_tuple(values, name: str) -> _Floats:
    if values is None:
        return None
    if isinstance(values, str):
        values = [v for v in values.replace(";", ",").split(",") if v.strip()]
    try:
        out = tuple(float(v) for v in np.ravel(np.asarray(values, dtype=object)))
    except (TypeError, ValueError):
        raise OptionError(name, f"{name} must be a sequence of numbers, got {values!r}") from None
    if not all(np.isfinite(out)):
        raise OptionError(name, f"{name} must be finite numbers, got {values!r}")
    return out


#: The integer settings of :data:`RANGES`.
_INTEGERS = ("max_num_iter", "n_classes", "seed")
#: How messages name the settings of :data:`RANGES`.
_NAMES = {
    "tv_weight": "the TV weight",
    "max_num_iter": "the maximum number of iterations",
    "n_classes": "the number of classes",
    "seed": "the seed",
    "diameter": "the cell diameter",
}


def check_range(value, field: str, name: Optional[str] = None):
    """``value`` as a float / int inside :data:`RANGES` ``[field]``; None passes through.

    The one range check of the numeric settings: :class:`SegmentOptions`, the mask
    correction's options and the command line call it.

    Raises
    ------
    OptionError
        A sentence naming the setting (``name``, default: its usual name) and the range.
    """
    if value is None:
        return None
    name = name or _NAMES.get(field, field)
    integer = field in _INTEGERS
    kind = "an integer" if integer else "a number"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptionError(field, f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if integer and float(value) != int(value):
        raise OptionError(field, f"{name} must be {kind}, got {value!r}")
    value = int(value) if integer else float(value)
    low, high = RANGES[field]
    if not np.isfinite(value) or not (low <= value <= high):
        span = f"{low} to {high}" if integer else f"{low:g} to {high:g}"
        raise OptionError(field, f"{name} must be {kind} from {span}, got {value if integer else format(value, 'g')}")
    return value


@dataclass(frozen=True)
class SegmentOptions:
    """Settings of one segmentation, validated once (frozen).

    ``None`` means "the default of the preset / solver / network".

    Parameters
    ----------
    method : {"auto", "vptv-adapted", "vptv", "unet", "vptv-unet"}
        ``"auto"`` (default): resolved per image by :meth:`resolve`;
        ``"vptv-adapted"``: the variational solver with the WBC colour model refitted
        on each image from the U-net; ``"vptv"``: the variational VPTV solver
        (Algorithm 1); ``"unet"`` / ``"vptv-unet"``: the shipped white blood cell
        networks (plain softmax / VPTV-softmax head). The settings of each:
        :mod:`napari_vptv.presets`.
    preset : {"auto", "wbc", "none"}
        See :data:`PRESETS` (default ``"auto"``). ``None`` is taken as ``"none"``.
    n_classes : int, optional
        Number of classes (2 to 255). The WBC preset and the networks have 3.
    volume_mode : {"exact", "interval", "none"}, optional
        Volume constraint. Default: inferred from ``volumes`` / ``lower``,
        ``upper``; the WBC preset's default is ``"interval"``.
    volumes : sequence of float, optional
        Exact class fractions ``V_i`` (sum 1).
    lower, upper : sequence of float, optional
        Per-class fraction bounds (``volume_mode="interval"``); both or neither.
    epsilon : float, optional
        Entropic regularisation ``eps`` of the softmax / optimal-transport step,
        from 1e-4 to 100 (:data:`RANGES`); smaller is sharper.
    tv_weight : float, optional
        Weight ``lambda`` of the total-variation (boundary length) term, from 0
        to 100; larger gives smoother boundaries.
    edge : bool, optional
        Weight the TV by the edge function ``e(x)`` (variational solver only).
    max_num_iter : int, optional
        Solver iterations (1 to 100 000); for the networks the unrolled
        iterations ``T``.
    seed : int
        Seed of the k-means initialisation (the only random step), 0 to 2**32 - 1.
    device : str
        torch device, e.g. ``"cpu"`` or ``"cuda"`` (checked when the options are
        used: :class:`napari_vptv.api.SegmentFn`).
    diameter : float
        Cell diameter in pixels for the networks; ``0`` estimates it
        automatically. Ignored by the variational solver.
    model : str
        Network to run for a network method: ``""`` (the shipped network of
        ``method``), a shipped model name (``"vptv-unet"``, ``"unet"``) or the
        path of a fine-tuned ``.pt`` file.
    require_nucleus : bool
        White blood cell labels (networks and WBC preset): a cell region without a
        nucleus (a red cell or debris taken for cytoplasm) becomes background
        (:func:`~napari_vptv.core.wbc.cell_rules.drop_cells_without_nucleus`). Not
        applied when volumes or bounds are given (or ``volume_mode`` is "exact" /
        "interval"): the rule would break the constraint you set.
    white_cell_rule : bool
        White blood cell labels: a cell region smaller than a share of the image's
        estimated white-cell diameter, or with a nucleus too small for a white cell
        (a platelet, a speck), becomes background
        (:func:`~napari_vptv.core.wbc.cell_rules.drop_non_white_cells`). Applied when the
        nucleus rule is, and only when a diameter is known (estimated or given).
    augment : {1, 2, 8}
        Test-time augmentation of the networks (not of the U-net that initialises
        the variational WBC auto mode: no gain there): the logits averaged over the image and its mirror
        image (2, default), all 8 flips / quarter turns (8) or none (1). The network
        time grows by that factor; about +1 pt on sources the network never saw
        (``True`` / ``False`` are read as 8 / 1).

    Raises
    ------
    OptionError
        (a ``ValueError``) A sentence naming the bad setting (unknown method /
        preset, a number outside :data:`RANGES`, impossible volumes, a WBC setting
        with a class count other than 3, ...); ``error.field`` names the field.

    Examples
    --------
    >>> SegmentOptions.wbc(volume_mode="exact").n_classes_for(rgb=True)
    3
    >>> SegmentOptions(n_classes=2, volumes=[0.8, 0.2]).replace(seed=1).seed
    1
    """

    method: str = DEFAULT_METHOD
    preset: str = "auto"
    n_classes: Optional[int] = None
    volume_mode: Optional[str] = None
    volumes: _Floats = None
    lower: _Floats = None
    upper: _Floats = None
    epsilon: Optional[float] = None
    tv_weight: Optional[float] = None
    edge: Optional[bool] = None
    max_num_iter: Optional[int] = None
    seed: int = 0
    device: str = "cpu"
    diameter: float = NETWORKS.diameter
    model: str = ""
    require_nucleus: bool = CELL_RULES.require_nucleus
    augment: int = NETWORKS.augment
    white_cell_rule: bool = CELL_RULES.white_cell_rule

    # ------------------------------------------------------------ validation
    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise the fields once, here
        set_(self, "preset", "none" if self.preset is None else self.preset)
        if self.method not in METHODS:
            raise OptionError("method", f"method must be one of {METHODS}, got {self.method!r}")
        if self.preset not in PRESETS:
            raise OptionError("preset", f"preset must be one of {PRESETS}, got {self.preset!r}")
        self._check_classes()
        if self.volume_mode is not None and self.volume_mode not in VOLUME_MODES:
            raise OptionError(
                "volume_mode", f"volume_mode must be 'exact', 'interval' or 'none', got {self.volume_mode!r}"
            )
        for name in ("volumes", "lower", "upper"):
            set_(self, name, _float_tuple(getattr(self, name), name))
        if (self.lower is None) != (self.upper is None):
            raise OptionError("lower", "interval volumes need both lower and upper bounds")
        set_(self, "epsilon", check_range(self.epsilon, "epsilon"))
        set_(self, "tv_weight", check_range(self.tv_weight, "tv_weight"))
        if self.edge is not None:
            set_(self, "edge", bool(self.edge))
        for name in ("max_num_iter", "seed", "diameter"):
            set_(self, name, check_range(getattr(self, name), name))
        if not isinstance(self.device, str) or not self.device.strip():
            raise OptionError(
                "device", f"device must be a torch device name such as 'cpu' or 'cuda', got {self.device!r}"
            )
        set_(self, "require_nucleus", bool(self.require_nucleus))
        set_(self, "white_cell_rule", bool(self.white_cell_rule))
        self._check_augment()
        self._check_model()
        self._check_adapted()
        try:
            self._check_volumes()
        except OptionError:
            raise
        except ValueError as exc:
            field = "volumes" if self.volumes is not None else ("lower" if self.lower is not None else "volume_mode")
            raise OptionError(field, str(exc)) from None

    def _check_classes(self):
        k = self.n_classes
        if k is None:
            return
        k = check_range(k, "n_classes")
        object.__setattr__(self, "n_classes", k)
        if self.preset == "wbc" and k != 3:
            raise OptionError(
                "n_classes", f"the WBC preset has 3 classes (background, cytoplasm, nucleus), got n_classes={k}"
            )
        if self.is_network and k != 3:
            raise OptionError("n_classes", f"method {self.method!r} (a WBC network) has 3 classes, got n_classes={k}")

    def _check_augment(self):
        a = self.augment
        if isinstance(a, (bool, np.bool_)):
            a = 8 if a else 1
        if isinstance(a, float) and a.is_integer():
            a = int(a)
        if not isinstance(a, (int, np.integer)) or int(a) not in AUGMENT_CHOICES:
            raise OptionError(
                "augment",
                f"augment must be one of {AUGMENT_CHOICES} (test-time transforms averaged), got {self.augment!r}",
            )
        object.__setattr__(self, "augment", int(a))

    def _check_model(self):
        model = str(self.model or "")
        object.__setattr__(self, "model", model)
        if not model:
            return
        if model in NETWORK_METHODS:
            if self.is_network and model != self.method:
                raise OptionError(
                    "model", f"model {model!r} is the shipped network of method {model!r}, not of {self.method!r}"
                )
        elif not model.endswith(".pt"):
            raise OptionError(
                "model", f"model must be one of {NETWORK_METHODS} or the path of a .pt file, got {model!r}"
            )

    def _check_adapted(self):
        if self.method != "vptv-adapted":
            return
        if self.preset == "none":
            raise OptionError(
                "preset",
                "method 'vptv-adapted' is the WBC preset refitted per image; "
                "it has no preset 'none' (use method 'vptv')",
            )
        if self.volume_mode is not None or self.volumes is not None or self.lower is not None:
            raise OptionError(
                "volume_mode",
                "method 'vptv-adapted' sets its own volume interval per image; "
                "for given volumes use method 'vptv' or 'vptv-unet'",
            )

    def _check_volumes(self):
        """Check the volume constraint now: one clear message before any file is read."""
        if self.volume_mode is None and self.volumes is None and self.lower is None:
            return
        if (
            self.volume_mode in ("exact", "interval")
            and self.volumes is None
            and self.lower is None
            and (self.preset != "none" or self.is_network)
        ):
            return  # the preset's / network's own priors
        k = self.n_classes
        if k is None:
            given = self.volumes if self.volumes is not None else self.lower
            k = len(given) if given is not None else (3 if (self.preset == "wbc" or self.is_network) else 2)
        make_volume_spec(k, self.volume_mode, self.volumes, self.lower, self.upper)

    # -------------------------------------------------------------- queries
    @property
    def is_network(self) -> bool:
        """Whether ``method`` runs a shipped network."""
        return self.method in NETWORK_METHODS

    @property
    def network_name(self) -> str:
        """The network to load: ``model`` if given, else the method's shipped one."""
        return self.model or self.method

    @property
    def volume_bounds(self) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
        """``(lower, upper)`` or None."""
        return None if self.lower is None else (self.lower, self.upper)

    @property
    def has_volumes(self) -> bool:
        """Whether any volume setting (mode, fractions or bounds) is given."""
        return self.volume_mode is not None or self.volumes is not None or self.lower is not None

    def resolved_preset(self, rgb: bool) -> str:
        """The preset that applies to an image with (``rgb``) or without colour."""
        if self.preset != "auto":
            return self.preset
        if self.is_network or self.method == "vptv-adapted":
            return "wbc"  # WBC methods
        lengths = {len(v) for v in (self.volumes, self.lower) if v is not None}
        return "wbc" if rgb and self.n_classes in (None, 3) and lengths <= {3} else "none"

    def resolve(self, rgb: bool) -> "SegmentOptions":
        """The options with ``"auto"`` resolved for an image with (``rgb``) or without colour.

        The one place where ``"auto"`` is decided (:mod:`napari_vptv.presets`): the
        preset as :meth:`resolved_preset`; the method ``"vptv-unet"`` when a WBC
        request without an explicit preset gives volumes or bounds (its VPTV layer holds
        the network to them), ``"vptv-adapted"`` for a WBC request without volume
        settings, else ``"vptv"`` (an explicit preset asks for the variational solver).
        ``method="vptv"`` with the WBC preset and no volume settings is
        ``"vptv-adapted"`` too. The result's method is never ``"auto"``.

        Examples
        --------
        >>> SegmentOptions().resolve(rgb=True).method
        'vptv-adapted'
        >>> SegmentOptions().resolve(rgb=False).method
        'vptv'
        """
        preset = self.resolved_preset(rgb)
        method = self.method
        if method == "auto":
            given = self.volumes is not None or self.lower is not None
            method = "vptv-unet" if self.preset == "auto" and preset == "wbc" and given else "vptv"
        if method == "vptv" and preset == "wbc" and not self.has_volumes:
            method = "vptv-adapted"
        if method == self.method and preset == self.preset:
            return self
        return self.replace(method=method, preset=preset)

    def n_classes_for(self, rgb: bool) -> int:
        """Number of classes of the labels for an RGB / grey input."""
        if self.resolved_preset(rgb) == "wbc":
            return 3
        if self.n_classes is not None:
            return self.n_classes
        given = self.volumes if self.volumes is not None else self.lower
        return len(given) if given is not None else 2

    # --------------------------------------------------------- constructors
    def replace(self, **changes) -> "SegmentOptions":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as plain Python values (JSON-serialisable)."""
        return {
            f.name: (list(v) if isinstance(v, tuple) else v)
            for f in dataclasses.fields(self)
            for v in (getattr(self, f.name),)
        }

    @classmethod
    def from_kwargs(cls, volume_bounds=None, **settings) -> "SegmentOptions":
        """Options from keyword settings; ``volume_bounds=(lower, upper)`` is accepted.

        Raises
        ------
        TypeError
            An unknown keyword (named).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise TypeError(f"unknown segmentation option(s): {', '.join(unknown)}")
        if volume_bounds is not None:
            try:
                lower, upper = volume_bounds
            except (TypeError, ValueError):
                raise ValueError("volume_bounds must be a pair (lower, upper) of per-class fractions") from None
            if lower is not None or upper is not None:
                settings.update(lower=lower, upper=upper)
        return cls(**settings)

    @classmethod
    def preset_named(cls, preset: Optional[str], **settings) -> "SegmentOptions":
        """Options of a named preset (see :data:`PRESETS`), other fields from ``settings``."""
        return cls(preset=preset, **settings)

    @classmethod
    def wbc(cls, **settings) -> "SegmentOptions":
        """The white blood cell preset (3 classes, colour model, interval volume prior)."""
        return cls(preset="wbc", **settings)

    @classmethod
    def kmeans(cls, n_classes: int = 2, **settings) -> "SegmentOptions":
        """No preset: the solver initialised by k-means with ``n_classes`` classes."""
        return cls(preset="none", n_classes=n_classes, **settings)

    @classmethod
    def auto(cls, **settings) -> "SegmentOptions":
        """``"wbc"`` for RGB images (3 or unset classes), k-means otherwise (the default)."""
        return cls(preset="auto", **settings)


#: Evidence of a mask correction: a colour model of the mask, or the VPTVU-net's
#: class probabilities (WBC nuclei / classes of an RGB image).
CORRECT_MODELS = ("colour", "vptv-unet")

#: the core's correction defaults (the one place they are written)
_CORE = CorrectSettings()


@dataclass(frozen=True)
class CorrectOptions:
    """Settings of one mask correction (:func:`napari_vptv.api.correct_image`), validated
    once (frozen): the evidence (``model``) and the core's settings. Those are
    described, with their defaults, in one place:
    :class:`~napari_vptv.core.correct.settings.CorrectSettings`; ``None`` here means
    that default, and :meth:`to_settings` makes the core's object.

    Parameters
    ----------
    model : {"colour", "vptv-unet"}
        The evidence: a colour model of the mask (default) or the VPTVU-net's
        probabilities (needs an RGB image; run on ``device``).
    mode, volume_mode, volume_factor, volume_tolerance, area_tolerance, band, margin : optional
        Fields of :class:`~napari_vptv.core.correct.settings.CorrectSettings`.
    epsilon, tv_weight, edge, mask_weight, fill_holes, max_num_iter, stack_mode, edge_position : optional
        Likewise; ``epsilon``, ``tv_weight``, ``max_num_iter`` within :data:`RANGES`.
    seed : int
        Likewise, within :data:`RANGES`.
    device : str
        torch device of the solver and of the network evidence.

    Examples
    --------
    >>> CorrectOptions(volume_mode="exact").core_kwargs()
    {'mode': 'objects', 'volume_mode': 'exact', 'seed': 0, 'device': 'cpu'}
    >>> CorrectOptions(volume_mode="exact").to_settings().tv_weight
    0.05
    """

    mode: str = _CORE.mode
    model: str = "colour"
    volume_mode: Optional[str] = None
    volume_factor: Optional[float] = None
    volume_tolerance: Optional[float] = None
    area_tolerance: Optional[float] = None
    band: Optional[int] = None
    margin: Optional[int] = None
    epsilon: Optional[float] = None
    tv_weight: Optional[float] = None
    edge: Optional[bool] = None
    mask_weight: Optional[float] = None
    fill_holes: Optional[bool] = None
    max_num_iter: Optional[int] = None
    stack_mode: Optional[str] = None
    seed: int = _CORE.seed
    device: str = _CORE.device
    edge_position: Optional[str] = None

    def __post_init__(self):
        for name, choices in (
            ("mode", correct_settings.CORRECTION_MODES),
            ("model", CORRECT_MODELS),
            ("volume_mode", correct_settings.VOLUME_MODES),
            ("stack_mode", correct_settings.STACK_MODES),
            ("edge_position", correct_settings.EDGE_POSITIONS),
        ):
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise OptionError(name, f"{name} must be one of {choices}, got {value!r}")
        set_ = object.__setattr__
        for name in ("epsilon", "tv_weight", "max_num_iter", "seed"):
            set_(self, name, check_range(getattr(self, name), name))
        for name, low, high, integer in (
            ("volume_factor", 0.0, np.inf, False),
            ("volume_tolerance", 0.0, 1.0, False),
            ("area_tolerance", 0.0, 1.0, False),
            ("band", 1, np.inf, True),
            ("margin", 1, np.inf, True),
            ("mask_weight", 0.0, np.inf, False),
        ):
            set_(self, name, _bounded(getattr(self, name), name, low, high, integer))
        if self.volume_factor is not None and self.volume_factor <= 0:
            raise OptionError("volume_factor", f"volume_factor must be a positive number, got {self.volume_factor:g}")
        for name in ("edge", "fill_holes"):
            if getattr(self, name) is not None:
                set_(self, name, bool(getattr(self, name)))
        if not isinstance(self.device, str) or not self.device.strip():
            raise OptionError("device", f"device must be a torch device name such as 'cpu', got {self.device!r}")

    def replace(self, **changes) -> "CorrectOptions":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def core_kwargs(self) -> Dict[str, Any]:
        """The keywords of :func:`~napari_vptv.core.correct.mask.correct_mask` that are set
        (``model`` is not one: :func:`napari_vptv.api.correct_image` turns it into evidence)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "model" and getattr(self, f.name) is not None
        }

    def to_settings(self) -> CorrectSettings:
        """The core's :class:`~napari_vptv.core.correct.settings.CorrectSettings`: the
        fields that are set, the core's defaults for the others (``model`` is not a core
        setting: :func:`napari_vptv.api.correct_image` turns it into evidence)."""
        return _CORE.replace(**self.core_kwargs())


def _bounded(value, name: str, low, high, integer: bool):
    """``value`` in ``[low, high)`` (``high`` inf: no upper limit); None passes through."""
    if value is None:
        return None
    kind = "a whole number" if integer else "a number"
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, float, np.integer, np.floating))
        or (integer and float(value) != int(value))
    ):
        raise OptionError(name, f"{name} must be {kind}, got {value!r}")
    value = int(value) if integer else float(value)
    if not np.isfinite(value) or value < low or (np.isfinite(high) and value >= high):
        span = f">= {low:g}" if not np.isfinite(high) else f"in [{low:g}, {high:g})"
        raise OptionError(name, f"{name} must be {kind} {span}, got {value:g}")
    return value
