"""`ad space`: the design space of a config (no JAX: it answers in a second)."""

from __future__ import annotations

from ad import configs, space as space_lib


def cmd_space(args) -> int:
  cfg = configs.load_config(args.config, args.overrides)
  space = space_lib.DesignSpace.from_config(cfg.space)
  print(f"design space ({configs.resolve(args.config)}), {cfg.model.num_blocks} blocks per student:")
  print(space.describe())
  if args.list:
    for a in space.archs():
      print(a.name)
  return 0
