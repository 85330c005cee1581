"""Parameter / multiply-add table of every family and depth: ``python -m involution.models.table``.

Models are built on the ``meta`` device, so counting needs no memory and no arithmetic (a few
seconds for all fifteen). MACs come from ``count_macs`` (torch.utils.flop_counter: convolutions,
linear layers, involution ops); the official RedNet numbers (REFERENCE.md) are shown beside ours.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

import torch

from involution.models.counting import count_macs, count_params
from involution.models.network import STAGE_DEPTHS
from involution.models.registry import FAMILIES, create_model

# Official RedNet ImageNet zoo: params (M), multiply-adds (G) at 224x224 (official counter).
OFFICIAL: dict[str, tuple[float, float]] = {
    "rednet26": (9.23, 1.73),
    "rednet38": (12.39, 2.22),
    "rednet50": (15.54, 2.71),
    "rednet101": (25.65, 4.74),
    "rednet152": (33.99, 6.79),
}


def model_table(
    families: Iterable[str] = tuple(FAMILIES),
    depths: Iterable[int] = tuple(STAGE_DEPTHS),
    image_size: int = 224,
    num_classes: int = 1000,
) -> list[dict[str, object]]:
    """One row per model: name, stage depths, params, MACs, and the official numbers if any."""
    rows = []
    for family in families:
        for depth in depths:
            name = f"{family}{depth}"
            with torch.device("meta"):
                model = create_model(name, num_classes=num_classes)
            official = OFFICIAL.get(name) if (image_size, num_classes) == (224, 1000) else None
            rows.append(
                {
                    "model": name,
                    "operator": model.operator["name"],
                    "stem": model.stem_kind,
                    "blocks": STAGE_DEPTHS[depth],
                    "params": count_params(model),
                    "macs": count_macs(model, (3, image_size, image_size)),
                    "official_params_m": official[0] if official else None,
                    "official_macs_g": official[1] if official else None,
                }
            )
    return rows


def _delta(ours: float, official: float | None) -> str:
    return "" if official is None else f"{100 * (ours / official - 1):+.1f}%"


def to_markdown(rows: list[dict[str, object]], image_size: int = 224) -> str:
    header = (
        f"| model | operator | stem | blocks per stage | params (M) | MACs (G) @ {image_size} "
        "| official params (M) | official MACs (G) | params vs official | MACs vs official |\n"
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for row in rows:
        blocks = ", ".join(str(b) for b in row["blocks"])  # type: ignore[attr-defined]
        params_m = row["params"] / 1e6  # type: ignore[operator]
        macs_g = row["macs"] / 1e9  # type: ignore[operator]
        official_p = row["official_params_m"]
        official_m = row["official_macs_g"]
        lines.append(
            f"| {row['model']} | {row['operator']} | {row['stem']} | {blocks} "
            f"| {params_m:.3f} | {macs_g:.3f} "
            f"| {'' if official_p is None else f'{official_p:.2f}'} "
            f"| {'' if official_m is None else f'{official_m:.2f}'} "
            f"| {_delta(params_m, official_p)} | {_delta(macs_g, official_m)} |"  # type: ignore[arg-type]
        )
    return header + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    args = parser.parse_args(argv)
    rows = model_table(args.families, image_size=args.image_size, num_classes=args.num_classes)
    print(to_markdown(rows, args.image_size), end="")


if __name__ == "__main__":
    main()
