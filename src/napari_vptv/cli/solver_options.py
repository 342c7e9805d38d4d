"""The segmentation options shared by ``segment``, ``evaluate`` and ``demo``, and the
one conversion of a parsed command line into :class:`~napari_vptv.options.SegmentOptions`."""

from __future__ import annotations

import argparse
import dataclasses
import os

from ..options import AUGMENT_CHOICES, METHODS, NETWORK_METHODS, PRESETS, OptionError, SegmentOptions
from ..options import check_range as _check_range
from ..presets import DEFAULT_METHOD, GENERIC, NETWORKS, VPTV_ADAPTED, WBC_COLOUR
from .common import CLIError, echo_err, floats, nonneg_float, positive_float, positive_int

__all__ = [
    "METHOD_HELP",
    "FLAGS",
    "add_solver_options",
    "add_diameter_option",
    "options_from_args",
    "check_range",
    "cap_threads",
]

#: The command-line flag of each :class:`~napari_vptv.options.SegmentOptions` field.
FLAGS = {
    "method": "--method",
    "preset": "--preset",
    "n_classes": "--classes",
    "volume_mode": "--volume-mode",
    "volumes": "--volumes",
    "lower": "--lower",
    "upper": "--upper",
    "epsilon": "--epsilon",
    "tv_weight": "--tv-weight",
    "edge": "--edge",
    "max_num_iter": "--max-iter",
    "seed": "--seed",
    "device": "--device",
    "diameter": "--diameter",
    "model": "--model",
    "require_nucleus": "--keep-cells-without-nucleus",
    "white_cell_rule": "--no-white-cell-rule",
    "augment": "--augment",
}

METHOD_HELP = (
    "auto: resolved per image (napari_vptv.presets): vptv-adapted for a colour image, the VPTVU-net "
    "(vptv-unet) when 3-class volumes are given, the generic variational solver for grey images or other "
    "class counts; vptv-adapted: the variational solver with the white-blood-cell colour model refitted "
    "on each image from the U-net; vptv: the variational VPTV solver (the WBC preset's shipped colour "
    "model with volume settings, else k-means); unet / vptv-unet: the shipped white-blood-cell networks "
    "(plain softmax / VPTV-softmax head) (default: %(default)s)"
)


#: The argparse destinations that differ from the field names.
_DEST = {"n_classes": "classes", "max_num_iter": "max_iter"}
#: The field of each flag of :func:`add_solver_options`.
_FIELD_OF = {flag: field for field, flag in FLAGS.items()}


class _Group:
    """An argument group that leaves out the flags of the omitted fields."""

    def __init__(self, group, omit):
        self.group, self.omit = group, set(omit)

    def add_argument(self, flag, *args, **kwargs):
        if _FIELD_OF.get(flag) not in self.omit:
            self.group.add_argument(flag, *args, **kwargs)


def _default(values: dict) -> str:
    """``"vptv-adapted 0.05, ..."``: a setting's default per named method (napari_vptv.presets)."""
    return "; ".join(f"{name} {value:g}" for name, value in values.items())


def add_solver_options(p: argparse.ArgumentParser, *, default_preset: str = "auto", omit=()) -> None:
    """The segmentation options of ``p``: one flag per
    :class:`~napari_vptv.options.SegmentOptions` field (:data:`FLAGS`), the same
    defaults and help in ``segment``, ``evaluate`` and ``demo``. ``omit``: fields a
    command fixes itself (their flags are left out). ``--threads`` is added too."""
    unknown = set(omit) - set(FLAGS)
    if unknown:
        raise ValueError(f"not SegmentOptions fields: {sorted(unknown)}")
    g = _Group(p.add_argument_group("segmentation"), omit)
    g.add_argument("--method", choices=list(METHODS), default=DEFAULT_METHOD, help=METHOD_HELP)
    g.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=default_preset,
        help="wbc: white blood cell preset (3 classes: background/cytoplasm/nucleus, learned "
        "colour model, volume priors from the training masks); none: k-means initialised "
        "solver; auto: wbc for RGB images when --classes is unset or 3 (default: %(default)s)",
    )
    g.add_argument(
        "--classes",
        type=int,
        default=None,
        metavar="K",
        help="number of classes (default: 3 with the WBC preset, else 2)",
    )
    g.add_argument(
        "--volume-mode",
        choices=["exact", "interval", "none"],
        default=None,
        help="exact: class fractions = --volumes (the paper); interval: --lower <= fraction "
        "<= --upper; none: no volume constraint (default: from the options given; "
        "the WBC preset's default is interval)",
    )
    g.add_argument(
        "--volumes",
        type=floats,
        default=None,
        metavar="V1,V2,...",
        help="exact class fractions, one per class, summing to 1, e.g. 0.77,0.13,0.10 "
        "(default: the WBC preset's training averages; none without the preset)",
    )
    g.add_argument(
        "--lower",
        type=floats,
        default=None,
        metavar="L1,L2,...",
        help="lower bounds of the class fractions (interval mode; default: the WBC preset's, else none)",
    )
    g.add_argument(
        "--upper",
        type=floats,
        default=None,
        metavar="U1,U2,...",
        help="upper bounds of the class fractions (interval mode; default: the WBC preset's, else none)",
    )
    _add_solver_settings(g)
    add_diameter_option(g)


def _add_solver_settings(g) -> None:
    """eps, lambda, edge, iterations, seed, device, threads (defaults: napari_vptv.presets)."""
    per_method = "default per method: {}; the networks: their own"
    g.add_argument(
        "--epsilon",
        type=positive_float,
        default=None,
        metavar="E",
        help="entropic regularisation eps of the soft class assignment, 1e-4 to 100; smaller is sharper ("
        + per_method.format(
            _default(
                {
                    "vptv-adapted": VPTV_ADAPTED.epsilon,
                    "vptv with the WBC preset": WBC_COLOUR.epsilon,
                    "vptv without": GENERIC.epsilon,
                }
            )
        )
        + ")",
    )
    g.add_argument(
        "--tv-weight",
        type=nonneg_float,
        default=None,
        metavar="L",
        help="weight lambda of the total-variation (boundary length) term, 0 to 100; larger is smoother ("
        + per_method.format(
            _default(
                {
                    "vptv-adapted": VPTV_ADAPTED.tv_weight,
                    "vptv with the WBC preset": WBC_COLOUR.tv_weight,
                    "vptv without": GENERIC.tv_weight,
                }
            )
        )
        + ")",
    )
    g.add_argument(
        "--edge",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="weight the TV term by an edge function of the image, so boundaries prefer image edges (default: off)",
    )
    g.add_argument(
        "--max-iter",
        type=positive_int,
        default=None,
        metavar="N",
        help="maximum number of solver iterations, 1 to 100000 ("
        + per_method.format(_default({"vptv-adapted": VPTV_ADAPTED.max_num_iter, "vptv": GENERIC.max_num_iter}))
        + ")",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the k-means initialisation, >= 0 (default 0)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    g.group.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="torch CPU threads for one image, at most the CPU count (default: torch's; stacks use --workers)",
    )


def add_diameter_option(p) -> None:
    """``--diameter`` (the networks' cell diameter), ``--model`` (which network), the cell
    rules and ``--augment``."""
    p.add_argument(
        "--diameter",
        type=nonneg_float,
        default=NETWORKS.diameter,
        metavar="PX",
        help="cell diameter in pixels for the networks; 0 estimates it automatically (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME_OR_PATH",
        help="network to use: unet, vptv-unet, one of your models ('vptv finetune') or a .pt file; "
        "the default method takes its probabilities, a network --method runs it (its architecture "
        "decides which network method); default: the shipped networks",
    )
    p.add_argument(
        "--keep-cells-without-nucleus",
        dest="require_nucleus",
        action="store_false",
        help="white blood cell labels: keep cell regions that have (almost) no nucleus (by default a region "
        "whose nucleus is under 10 %% of its area becomes background: a white cell has a nucleus, a red cell "
        "or debris taken for cytoplasm does not; "
        "not applied with --volume-mode exact / interval, whose constraint wins)",
    )
    p.add_argument(
        "--no-white-cell-rule",
        dest="white_cell_rule",
        action="store_false",
        help="white blood cell labels: keep cell regions too small for a white cell (by default a region "
        "smaller than 0.4 of the estimated white-cell diameter, or whose nucleus is smaller than 0.2 of it, "
        "becomes background: platelets and specks; applied with the nucleus rule)",
    )
    p.add_argument(
        "--augment",
        type=int,
        choices=list(AUGMENT_CHOICES),
        default=NETWORKS.augment,
        metavar="N",
        help="networks: test-time augmentation, the mean over N transforms of each image: 2 = the image "
        "and its mirror image, 8 = all flips and quarter turns, 1 = none; N times the network time "
        "(about +1 pt on images from a lab the network never saw) (default: %(default)s)",
    )


def options_from_args(args, **fixed):
    """The :class:`~napari_vptv.options.SegmentOptions` of the command line (validated).

    ``"auto"`` stays unresolved: :func:`napari_vptv.api.segment_image` resolves it per image."""
    given = {f.name: getattr(args, _DEST.get(f.name, f.name), f.default) for f in dataclasses.fields(SegmentOptions)}
    given["model"] = ""
    arch = None
    if getattr(args, "model", None):
        from ..user_models import model_and_method

        given["model"], arch = model_and_method(args.model)
    given.update(fixed)
    # a network method runs the model itself (its architecture decides which);
    # the other methods use its probabilities
    if arch is not None and given["method"] in NETWORK_METHODS:
        given["method"] = arch
    try:
        opts = SegmentOptions(**given)
        if arch is not None and opts.method == "auto" and opts.resolve(rgb=True).is_network:
            opts = opts.replace(method=arch)
        return opts
    except OptionError as exc:
        raise CLIError(f"{FLAGS.get(exc.field, exc.field)}: {exc}") from None


def check_range(value, field: str, flag: str):
    """``value`` if inside :data:`~napari_vptv.options.RANGES` ``[field]`` (None passes); else a
    CLIError naming ``flag`` (:func:`napari_vptv.options.check_range`)."""
    try:
        return _check_range(value, field, flag)
    except OptionError as exc:
        raise CLIError(str(exc)) from None


def cap_threads(n, flag: str = "--threads"):
    """``n`` capped at the machine's CPU count (more threads only slow down or crash BLAS)."""
    cpus = os.cpu_count() or 1
    if n is not None and n > cpus:
        echo_err(f"{flag} {n} is more than the {cpus} CPU(s) of this machine; using {cpus}")
        return cpus
    return n
