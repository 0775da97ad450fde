"""Build, convert or validate a benchmark directory.

python -m cmkd.data build synth --out data/synth [--seed 0] [--shared 8 ...]
python -m cmkd.data build synth-nohelp --out data/synth-nohelp
python -m cmkd.data build avdigits --out data/avdigits [--languages en,fr --repeats 1 ...]
python -m cmkd.data build sonified --out data/sonified
python -m cmkd.data build sonified-lt --out data/sonified-lt
python -m cmkd.data build sonified-paired --out data/sonified-paired
python -m cmkd.data convert ravdess RAW_DIR --out data/ravdess
python -m cmkd.data convert ave RAW_DIR --out data/ave [--image-size 32 --segment event]
python -m cmkd.data validate data/avdigits
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cmkd import cli
from cmkd.data.schema import (
    META_FILE,
    POOL,
    SPLITS,
    DataError,
    has_pool,
    load_split,
    pool_path,
    read_meta,
    split_path,
    validate_benchmark,
)

SONIFIED = ("sonified", "sonified-lt", "sonified-paired")
_SYNTH_KNOBS = {  # flag: help, and the range SynthParams checks (here per flag, by name)
    "num_classes": ("classes shared by both modalities", cli.integer(2)),
    "dim": ("observed features per modality, x: (dim,)", cli.positive_int),
    "shared": (
        "modality-general decisive latent dims (same class code in a and b)",
        cli.non_negative_int,
    ),
    "specific": ("modality-specific decisive latent dims, per modality", cli.non_negative_int),
    "nondecisive": ("latent dims per modality without label information", cli.non_negative_int),
    "class_sep": ("std of the class codes in each decisive dim", cli.positive_float),
    "noise": ("within-class std of the decisive latents", cli.non_negative_float),
    "obs_noise": ("std of the noise on the observed features", cli.non_negative_float),
    "train_per_class": ("train samples per class and modality", cli.positive_int),
    "val_per_class": ("val samples per class and modality", cli.positive_int),
    "test_per_class": ("test samples per class and modality", cli.positive_int),
    "pool_per_class": (
        "unlabelled samples per class and modality ({a,b}_unlabelled), 0 for none "
        "[train-per-class]",
        cli.non_negative_int,
    ),
}


def _parser() -> argparse.ArgumentParser:
    from cmkd.data.avdigits import POOL_CLIPS, VARIANTS, WORDS
    from cmkd.data.synth import REGIMES

    parser = cli.parser(
        "python -m cmkd.data", "Build, convert or validate a cmkd benchmark directory."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build",
        help="build a built-in benchmark into a directory",
        description="Build a benchmark offline. The directory is the cache: an existing build "
        "with the same options is kept; other options need --force.",
    )
    names = build.add_subparsers(dest="name", required=True, metavar="NAME")
    for regime, defaults in REGIMES.items():
        sub = names.add_parser(
            regime,
            help=f"two-view Gaussians, {defaults.shared} shared + {defaults.specific} specific "
            "decisive dims (Xue et al. 2023)",
        )
        group = sub.add_argument_group("generator knobs (defaults: this regime's)")
        for name, (text, kind) in _SYNTH_KNOBS.items():
            default = getattr(defaults, name)
            group.add_argument(
                f"--{name.replace('_', '-')}",
                type=kind,
                metavar="X" if isinstance(default, float) else "N",
                help=text if default is None else f"{text} [{default}]",
            )
    sub = names.add_parser(
        "avdigits",
        help="MNIST digits (image) and espeak-ng spoken digit words (audio)",
        epilog="Tiny build for tests: --languages en,fr --variants m1,f1,m3 --repeats 1 "
        "--images-per-class 10",
    )
    sub.add_argument("--languages", type=_csv, metavar="A,B", help=f"[{','.join(WORDS)}]")
    sub.add_argument(
        "--variants",
        type=_csv,
        metavar="A,B",
        help=f"espeak-ng voice variants, >= 3 (test and val hold some out) [{','.join(VARIANTS)}]",
    )
    sub.add_argument(
        "--repeats", type=cli.positive_int, metavar="N", help="clips per voice and digit [4]"
    )
    sub.add_argument(
        "--images-per-class",
        type=cli.positive_int,
        metavar="N",
        help="at most N MNIST images per class [500]",
    )
    sub.add_argument(
        "--workers",
        type=cli.positive_int,
        metavar="N",
        help="parallel espeak-ng processes [CPU count]",
    )
    sub.add_argument(
        "--pool-clips",
        type=cli.non_negative_int,
        metavar="N",
        help=f"unlabelled clips in the training voices (audio_unlabelled), 0 for none "
        f"[{POOL_CLIPS}]",
    )
    names.add_parser(
        "sonified",
        help="MNIST digits (image) and other MNIST digits made audible by the vOICe mapping "
        "(audio), held-out voices for test, an unlabelled audio pool",
    )
    names.add_parser(
        "sonified-lt",
        help="sonified with a long-tailed class prior (imbalance 10) shared by the images, the "
        "audio pool and the audio test split; balanced audio train and val",
    )
    names.add_parser(
        "sonified-paired",
        help="sonified with true pairs: every clip is the sound of an image of the image "
        "tables, both rows carrying the same pair_id (the paired setting)",
    )
    for sub in names.choices.values():
        sub.add_argument(
            "--out", type=Path, required=True, metavar="DIR", help="benchmark directory to write"
        )
        sub.add_argument("--seed", type=cli.seed, default=0, metavar="N", help="random seed [0]")
        sub.add_argument("--force", action="store_true", help="rebuild over an existing build")

    convert = commands.add_parser(
        "convert",
        help="convert a raw public release you downloaded",
    )
    sources = convert.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, text in (
        ("ravdess", "RAVDESS speech: RAW/Actor_XX/MM-VV-EE-II-SS-RR-AA.wav, 8 emotions (audio)"),
        ("cremad", "CREMA-D: RAW/AudioWAV/1001_DFA_ANG_XX.wav, 6 emotions (audio)"),
        (
            "ave",
            "AVE: RAW/AVE_Dataset/{Annotations,trainSet,valSet,testSet}.txt and "
            "AVE/<VideoID>.mp4, 28 events, official splits (audio, image)",
        ),
    ):
        sub = sources.add_parser(name, help=text, description=text)
        sub.add_argument("raw", type=Path, metavar="RAW", help="the folder of the raw release")
        sub.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
        seed_help = "recorded only: the splits are fixed" if name == "ave" else "speaker split seed"
        sub.add_argument("--seed", type=cli.seed, default=0, metavar="N", help=f"{seed_help} [0]")
        sub.add_argument(
            "--n-mels", type=cli.positive_int, default=40, metavar="N", help="mel bands [40]"
        )
        sub.add_argument(
            "--frames", type=cli.positive_int, default=300, metavar="N", help="10 ms frames [300]"
        )
        sub.add_argument("--force", action="store_true", help="replace an existing conversion")
    ravdess = sources.choices["ravdess"]
    ravdess.add_argument(
        "--video",
        metavar="DIR",
        help="the RAVDESS video release (Video_Speech_Actor_XX/Actor_XX/*.mp4): adds an image "
        "modality, the frame at each clip's middle",
    )
    ravdess.add_argument(
        "--image-size",
        type=cli.positive_int,
        metavar="N",
        help="image side in pixels, with --video [32]",
    )
    ave = sources.choices["ave"]
    ave.add_argument(
        "--image-size",
        type=cli.positive_int,
        default=32,
        metavar="N",
        help="image side in pixels [32]",
    )
    ave.add_argument(
        "--segment",
        choices=("event", "clip"),
        default="event",
        help="audio of the annotated event or of the whole clip [event]",
    )

    validate = commands.add_parser("validate", help="check every file of a benchmark directory")
    validate.add_argument("dir", type=Path)
    validate.add_argument(
        "--modalities", type=_csv, metavar="A,B", help="[all modalities in meta.json]"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check every value, writing nothing: a bad one exits 2 (cmkd.cli)."""
    args = _parser().parse_args(argv)
    if args.command == "build" and args.name == "avdigits":
        _check_avdigits(args)
    elif args.command == "build" and args.name not in SONIFIED:
        _check_synth(args)
    elif args.command == "convert":
        if not args.raw.is_dir():
            cli.fail(f"RAW {str(args.raw)!r}: no such folder, expected the raw release's folder")
        if args.name == "ravdess" and args.video is not None and not Path(args.video).is_dir():
            cli.fail(f"--video {args.video!r}: no such folder, expected the video release's")
        if args.name == "ravdess" and args.video is None and args.image_size is not None:
            cli.fail(f"--image-size {args.image_size}: expected together with --video")
    return args


def _check_synth(args: argparse.Namespace) -> None:
    """The knobs' joint constraints (SynthParams's), named by the flags given."""
    from cmkd.data.synth import REGIMES

    given = {k: getattr(args, k) for k in _SYNTH_KNOBS if getattr(args, k) is not None}
    try:
        replace(REGIMES[args.name], **given)
    except ValueError as err:
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in given.items())
        cli.fail(f"{flags}: {err}")


def _check_avdigits(args: argparse.Namespace) -> None:
    from cmkd.data import espeak
    from cmkd.data.avdigits import WORDS

    unknown = [lang for lang in args.languages or () if lang not in WORDS]
    if unknown:
        cli.fail(f"--languages {','.join(args.languages)!r}: expected languages of {sorted(WORDS)}")
    if args.variants is not None:
        known = espeak.variants()
        if (
            len(set(args.variants)) != len(args.variants)
            or len(args.variants) < 3
            or any(v not in known for v in args.variants)
        ):
            cli.fail(
                f"--variants {','.join(args.variants)!r}: expected 3 or more distinct espeak-ng "
                f"variants of {known}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status: 0 ok, 1 invalid data, 2 a bad argument or refused."""
    try:
        args = parse_args(argv)
    except SystemExit as e:  # a bad argument, already said on stderr (or --help)
        return e.code
    if args.command in ("build", "convert"):
        return _build(args)
    return _validate(args.dir, args.modalities)


def _build(args: argparse.Namespace) -> int:
    from cmkd.data.avdigits import build_avdigits
    from cmkd.data.ave import convert_ave
    from cmkd.data.convert import convert_cremad, convert_ravdess
    from cmkd.data.sonified import build_sonified
    from cmkd.data.synth import REGIMES, build_synth

    skip = {"command", "name", "out", "seed", "force", "workers", "raw"}
    options = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    found, wanted = _existing_build(args.out), (args.name, args.seed, options)
    if found is not None and not args.force:
        if found == wanted:
            print(f"{args.out}: {args.name} already built with these options (--force rebuilds)")
            return 0
        print(
            f"{args.out}: holds {found[0]} seed {found[1]} options {found[2]}, not "
            f"{args.name} seed {args.seed} options {options}; pass --force to replace it "
            "or choose another --out",
            file=sys.stderr,
        )
        return 2
    (args.out / META_FILE).unlink(missing_ok=True)  # an interrupted rebuild stays incomplete

    out, seed = args.out, args.seed
    run = {
        **{r: lambda r=r: build_synth(out, r, seed, progress=True, **options) for r in REGIMES},
        "avdigits": lambda: build_avdigits(
            out, seed, workers=args.workers, progress=True, **options
        ),
        "ravdess": lambda: convert_ravdess(args.raw, out, seed, progress=True, **options),
        "cremad": lambda: convert_cremad(args.raw, out, seed, progress=True, **options),
        "ave": lambda: convert_ave(args.raw, out, seed, progress=True, **options),
        **{
            name: lambda name=name: build_sonified(
                out,
                name,
                long_tail=name.endswith("-lt"),
                paired=name.endswith("-paired"),
                seed=seed,
                progress=True,
            )
            for name in SONIFIED
        },
    }[args.name]
    start = time.perf_counter()
    try:
        run()
        seconds = time.perf_counter() - start
        validate_benchmark(out)
    except (DataError, ValueError) as err:  # DataError names the file at fault
        print(f"error: {err}", file=sys.stderr)
        return 1
    _print_files(args.out)
    print(f"built {args.name} (seed {args.seed}) in {seconds:.1f} s")
    return 0


def _validate(directory: Path, modalities: list[str] | None) -> int:
    try:
        meta = validate_benchmark(directory, modalities)
    except DataError as err:
        print(f"invalid: {err}", file=sys.stderr)
        return 1
    print(f"{directory}: {meta.name}, {meta.num_classes} classes, seed {meta.seed}")
    for m in modalities or meta.modalities:
        print(f"  {m}: x {list(meta.shapes[m])}")
        for s in SPLITS:
            split = load_split(directory, m, s, meta)
            groups = "" if split.groups is None else f", {len(set(split.groups))} groups"
            print(f"    {s:5} {len(split):6} rows, {len(set(split.y.tolist()))} classes{groups}")
        if has_pool(directory, m):
            rows = pq.read_metadata(pool_path(directory, m)).num_rows
            print(f"    {POOL} {rows:6} rows, no labels")
    print("ok")
    return 0


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected names separated by commas")
    return items


def _existing_build(out: Path) -> tuple[str, int | None, dict[str, Any]] | None:
    """(name, seed, options given to the builder) of the complete build in out/, else None."""
    if not (out / META_FILE).is_file():
        return None
    try:
        meta = read_meta(out)
    except DataError:
        return None
    # A build whose meta.json records no options was made with the defaults.
    return meta.name, meta.seed, meta.params.get("options", {})


def _print_files(out: Path) -> None:
    meta = read_meta(out)
    total = 0
    for m in meta.modalities:
        for s in SPLITS + (POOL,):
            path = split_path(out, m, s)
            if s == POOL and not path.is_file():
                continue
            size = path.stat().st_size
            total += size
            rows = pq.read_metadata(path).num_rows
            print(f"  {path.name:28} {rows:7} rows {size / 1e6:8.2f} MB")
    print(f"  {'total':28} {'':12} {total / 1e6:8.2f} MB in {out}")


if __name__ == "__main__":
    sys.exit(main())
