"""``mmtl analyze``: analyses of tasks and runs (inter-task affinity)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmtl.cli.common import Subcommands, load_experiment
from mmtl.errors import MMTLError


def register(sub: Subcommands) -> None:
    """Add ``mmtl analyze`` and its actions."""
    analyze = sub.add_parser("analyze", help="analyses of tasks and runs").add_subparsers(
        dest="analyze_command", required=True, metavar="ACTION")
    af = analyze.add_parser("affinity", help="short training that measures inter-task affinity by lookahead (TAG) "
                            "and recommends task groupings", epilog="overrides: dotted keys, e.g. train.steps=50")
    af.add_argument("--config", help="experiment YAML (default: the built-in quickstart experiment)")
    af.add_argument("--every", type=int, default=5, help="measure every N training steps (default 5)")
    af.add_argument("--lookahead-lr", type=float, default=0.01, help="SGD step of the lookahead update (default 0.01)")
    af.add_argument("--max-groups", type=int, help="recommend at most this many groups (models)")
    af.add_argument("--out", help="output directory (default: <output_dir>-affinity)")
    af.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    af.set_defaults(func=_cmd_affinity)


def _cmd_affinity(args: argparse.Namespace) -> int:
    config = load_experiment(args.config, args.overrides)  # its sizes checked before torch is imported
    from mmtl.balancing.affinity import format_affinity, plot_affinity
    from mmtl.training.affinity import measure_affinity

    if args.every < 1 or args.lookahead_lr <= 0:
        raise MMTLError("--every must be >= 1 and --lookahead-lr positive")
    if len(config.tasks) < 2:
        raise MMTLError("affinity needs at least two tasks in the config")
    out = Path(args.out) if args.out else Path(f"{config.output_dir}-affinity")
    config.output_dir = str(out / "run")
    result = measure_affinity(config, args.every, args.lookahead_lr, args.max_groups)
    print(format_affinity(result))
    out.mkdir(parents=True, exist_ok=True)
    (out / "affinity.json").write_text(json.dumps(result.to_dict(), indent=2))
    print(f"wrote {out / 'affinity.json'} and {plot_affinity(result, out / 'affinity.png')}")
    return 0
